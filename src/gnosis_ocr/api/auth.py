"""The optional API key. When GNOSIS_API_KEY is set, protected routers depend on ``require_api_key``.

The key comes as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. GNOSIS_API_KEY may hold several keys
separated by commas, so a new key can be rolled out before the old one is withdrawn. Both sides are hashed before
the constant-time comparisons, so neither the content nor the length of a key leaks through timing.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from gnosis_ocr.api.deps import Context
from gnosis_ocr.api.errors import UnauthorizedError
from gnosis_ocr.errors import ConfigError

_bearer = HTTPBearer(auto_error=False, description="GNOSIS_API_KEY as a bearer token.")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="GNOSIS_API_KEY in a header.")


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_digests(value: str | None) -> tuple[bytes, ...]:
    """The digests of every key in a GNOSIS_API_KEY value (comma-separated; blanks ignored).

    A value that is set but holds no key (``,`` or `` , ``) is a ``ConfigError``: it must not turn the key off."""
    digests = tuple(key_digest(k.strip()) for k in (value or "").split(",") if k.strip())
    if value and value.strip() and not digests:
        raise ConfigError(
            f"GNOSIS_API_KEY is set but holds no key: it has only commas and spaces ({len(value)} characters).",
            hint="Set it to a key, or several separated by commas; leave it empty or unset to serve without a key.",
        )
    return digests


def require_api_key(
    ctx: Context,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    header: Annotated[str | None, Security(_header)],
) -> None:
    expected = ctx.api_key_digests
    if not expected:
        return
    matched = False
    for given in (bearer.credentials if bearer else None, header):
        if given is None:
            continue
        digest = key_digest(given)
        for key in expected:  # every key is compared, match or not
            matched |= hmac.compare_digest(digest, key)
    if not matched:
        raise UnauthorizedError(
            "The API key is wrong." if bearer or header else "This route needs the API key.",
            hint="Send it as `Authorization: Bearer <key>` or `X-API-Key: <key>` (GNOSIS_API_KEY on the server).",
        )
