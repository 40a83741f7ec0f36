"""The model hub, seen through huggingface_hub: what files a commit has, and their bytes.

Only ``warm`` (and ``refresh``) come here; a complete cache never does. huggingface_hub is imported lazily so
that the process environment (offline flags, telemetry off) is settled before it reads its constants.

Errors are wrapped at this seam and nowhere else: what the hub, a proxy or the network did (an HTTP error answer,
a refused, reset or cut connection, a timeout) becomes a ``HubError`` ``from`` the library's exception; anything
else raised while talking to the hub (a TypeError, a KeyError: a bug, ours or the library's) propagates as it is,
with its traceback, and is never retried. ``retryable`` says which HubErrors another attempt may cure.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gnosis_ocr.errors import HubError, RepoNotFoundError, RevisionNotFoundError
from gnosis_ocr.modelcache.layout import is_commit, safe_relpath

logger = logging.getLogger(__name__)

STREAM_CHUNK = 1024 * 1024
RETRY_STATUSES = frozenset({408, 429})  # and every 5xx: the server or a proxy may answer differently next time


def hub_failures() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the hub, a proxy or the network failed": huggingface_hub's HTTP errors, its HTTP
    client's transport errors (huggingface_hub 2.x talks through httpx2) and OSError from the socket below
    (refused, reset, timed out, TLS)."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    return (HfHubHTTPError, httpx2.HTTPError, OSError)


def retryable(exc: HubError) -> bool:
    """Whether another attempt may cure ``exc``: a transport failure (nothing or a cut answer came back) or an
    answer of 408, 429 or 5xx. Other answers (401, 403, 404, 416) and our own findings (a range ignored) say the
    same thing again, so they are not retried."""
    from huggingface_hub.errors import HfHubHTTPError

    cause = exc.__cause__
    if isinstance(cause, HfHubHTTPError):
        status = cause.response.status_code
        return status in RETRY_STATUSES or status >= 500
    return cause is not None and isinstance(cause, hub_failures())


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None  # LFS files: sha256 of the content
    blob_id: str | None  # every file: git blob sha1 (for LFS files, of the pointer)


@dataclass(frozen=True)
class RemoteSnapshot:
    repo_id: str
    commit: str
    files: tuple[RemoteFile, ...]

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


class HubClient:
    """A narrow view of one hub endpoint: list a commit, stream a file."""

    def __init__(self, endpoint: str, token: str | None = None, *, timeout: float = 30.0, retries: int = 5):
        self.endpoint = endpoint.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._retries = retries

    def __repr__(self) -> str:  # never shows the token
        return f"HubClient({self.endpoint!r})"

    def snapshot(self, repo_id: str, revision: str) -> RemoteSnapshot:
        """The commit ``revision`` points to on the hub, with every file's size and hashes."""
        from huggingface_hub import HfApi

        api = HfApi(endpoint=self.endpoint, token=self._token or False)
        try:
            info = api.model_info(repo_id, revision=revision, files_metadata=True, timeout=self._timeout)
        except hub_failures() as exc:
            raise self._wrap(exc, repo_id, revision) from exc
        commit = info.sha
        if commit is None or not is_commit(commit):
            raise HubError(f"The hub at {self.endpoint} gave no commit for {repo_id}@{revision}.")
        files = []
        for sibling in info.siblings or []:
            safe_relpath(sibling.rfilename)
            lfs = sibling.lfs
            size = sibling.size if sibling.size is not None else (lfs.size if lfs else None)
            if size is None:
                raise HubError(f"The hub at {self.endpoint} gave no size for {repo_id}/{sibling.rfilename}.")
            files.append(
                RemoteFile(
                    path=sibling.rfilename,
                    size=int(size),
                    sha256=lfs.sha256 if lfs else None,
                    blob_id=sibling.blob_id,
                )
            )
        return RemoteSnapshot(repo_id=repo_id, commit=commit, files=tuple(sorted(files, key=lambda f: f.path)))

    @contextlib.contextmanager
    def open_stream(self, repo_id: str, commit: str, path: str, offset: int = 0) -> Iterator[Iterator[bytes]]:
        """Body chunks of one file from ``offset`` on; HubError on an HTTP or transport failure, while connecting
        or while the body arrives. What the caller raises while it holds the stream (a full disk, a bug) comes out
        unchanged: only the hub's failures are the hub's."""
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils._headers import build_hf_headers
        from huggingface_hub.utils._http import get_session, hf_raise_for_status

        url = hf_hub_url(repo_id, path, revision=commit, endpoint=self.endpoint)
        headers = build_hf_headers(token=self._token or False)
        if offset:
            headers["Range"] = f"bytes={offset}-"
        failures = hub_failures()
        with contextlib.ExitStack() as stack:
            try:
                response = stack.enter_context(get_session().stream("GET", url, headers=headers, timeout=self._timeout))
                hf_raise_for_status(response)
            except failures as exc:
                raise self._wrap(exc, repo_id, commit, path) from exc
            if offset and response.status_code != 206:
                raise HubError(f"The hub at {self.endpoint} ignored a range request for {path}.")
            yield self._body(response, repo_id, commit, path, failures)

    def _body(
        self, response: Any, repo_id: str, commit: str, path: str, failures: tuple[type[BaseException], ...]
    ) -> Iterator[bytes]:
        try:
            yield from response.iter_bytes()  # as it arrives, so a cut connection keeps what came
        except failures as exc:
            raise self._wrap(exc, repo_id, commit, path) from exc

    def with_retries(self, what: str) -> Iterator[int]:
        """Attempt numbers 0..retries, sleeping with capped exponential backoff between them."""
        for attempt in range(self._retries + 1):
            if attempt:
                delay = min(2.0 ** (attempt - 1), 8.0)
                logger.warning("%s: retrying in %.0f s (attempt %d/%d)", what, delay, attempt + 1, self._retries + 1)
                time.sleep(delay)
            yield attempt

    def _wrap(self, exc: BaseException, repo_id: str, revision: str, path: str | None = None) -> HubError:
        from huggingface_hub.errors import (
            GatedRepoError,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
        )
        from huggingface_hub.errors import (
            RevisionNotFoundError as HfRevisionNotFound,
        )

        where = f"{repo_id}@{revision}" + (f"/{path}" if path else "")
        if isinstance(exc, GatedRepoError):
            return RepoNotFoundError(
                f"{repo_id} is gated on {self.endpoint}: access was refused.",
                hint="Accept the model's terms on the hub and set HF_TOKEN to a token that can read it.",
            )
        if isinstance(exc, RepositoryNotFoundError):
            return RepoNotFoundError(
                f"The hub at {self.endpoint} has no model {repo_id!r} (or it is private).",
                hint="Check MODEL_NAME / --model; for a private model set HF_TOKEN.",
            )
        if isinstance(exc, HfRevisionNotFound):
            return RevisionNotFoundError(
                f"{repo_id} has no revision {revision!r} on {self.endpoint}.",
                hint="Check GNOSIS_MODEL_REVISION / --revision (a branch, tag or 40-character commit sha).",
            )
        if isinstance(exc, RemoteEntryNotFoundError):
            return HubError(f"The hub at {self.endpoint} has no file {where}; the commit listing changed?")
        return HubError(
            f"Could not reach the model hub at {self.endpoint} for {where}: "
            f"{type(exc).__name__}: {str(exc).rstrip('.')}.",
            hint="Check the network and HF_ENDPOINT. A cache that is already complete needs no network.",
        )
