"""The optional API key. When GNOSIS_API_KEY is set, protected routers depend on ``require_api_key``.

The key comes as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Both sides are hashed before the
constant-time comparison, so neither the content nor the length of the key leaks through timing.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from gnosis_ocr.api.deps import Context
from gnosis_ocr.api.errors import UnauthorizedError

_bearer = HTTPBearer(auto_error=False, description="GNOSIS_API_KEY as a bearer token.")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="GNOSIS_API_KEY in a header.")


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def require_api_key(
    ctx: Context,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    header: Annotated[str | None, Security(_header)],
) -> None:
    expected = ctx.api_key_sha256
    if expected is None:
        return
    matched = False
    for given in (bearer.credentials if bearer else None, header):
        if given is not None and hmac.compare_digest(key_digest(given), expected):
            matched = True
    if not matched:
        raise UnauthorizedError(
            "The API key is wrong." if bearer or header else "This route needs the API key.",
            hint="Send it as `Authorization: Bearer <key>` or `X-API-Key: <key>` (GNOSIS_API_KEY on the server).",
        )
