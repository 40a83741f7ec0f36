"""The service's own errors, and which HTTP status every error of the tree stands for.

No FastAPI here: ``handlers`` turns these into responses. The service adds its own conditions the core has no
word for, all still ``GnosisError`` so one handler serves everything::

    GnosisError
    └── ServiceError                  the service refuses a request in its present state
        ├── ConflictError             409: something is already running, or the configuration forbids it
        ├── UnauthorizedError         401: missing or wrong API key
        ├── CrossSiteError            403: a state-changing request from another site's page
        ├── HostNotAllowedError       421: a Host that GNOSIS_ALLOWED_HOSTS does not name
        ├── UnavailableError          503: not ready yet, or shutting down
        │   └── BusyError             503: as much of this work as the server does at once runs already (Retry-After)
        ├── StorageFullError          507: the job storage has no space left (Retry-After)
        └── InvalidRequestError       422: a field's value cannot be used
"""

from __future__ import annotations

from typing import ClassVar

from gnosis_ocr.errors import (
    CacheCorruptError,
    CacheReadOnlyError,
    CallbackRefusedError,
    ConfigError,
    DocumentError,
    DocumentLimitError,
    EngineError,
    EngineUnavailableError,
    GnosisError,
    HubError,
    JobBusyError,
    JobFinishedError,
    JobNotFoundError,
    ModelNotCachedError,
    NetworkBlockedError,
    PushError,
    QueueFullError,
    RepoNotFoundError,
    RevisionNotFoundError,
    UnsupportedDocumentError,
)


class ServiceError(GnosisError):
    status: ClassVar[int] = 500


class ConflictError(ServiceError):
    status = 409


class UnauthorizedError(ServiceError):
    status = 401


class CrossSiteError(ServiceError):
    status = 403


class HostNotAllowedError(ServiceError):
    status = 421


class UnavailableError(ServiceError):
    status = 503


class BusyError(UnavailableError):
    """503: the server does as much of this work at once as it allows (PDF builds); retry after a few seconds."""


class StorageFullError(ServiceError):
    """507: the job storage is out of space (ENOSPC, a quota); nothing of the request was kept."""

    status = 507


class InvalidRequestError(ServiceError):
    """422: a request field has a value the server cannot use (engine, page selection, ...)."""

    status = 422


# The most specific class in an exception's MRO decides. A condition of the server (model missing, cache
# corrupt, engine missing) is 503, what the hub did is 502, what the request asked for is 4xx.
STATUS: dict[type[GnosisError], int] = {
    ConfigError: 400,
    ModelNotCachedError: 503,
    CacheCorruptError: 503,
    CacheReadOnlyError: 409,
    HubError: 502,
    RepoNotFoundError: 404,
    RevisionNotFoundError: 404,
    PushError: 502,
    NetworkBlockedError: 409,
    DocumentError: 422,
    UnsupportedDocumentError: 415,
    DocumentLimitError: 413,
    EngineError: 500,
    EngineUnavailableError: 503,
    JobNotFoundError: 404,
    JobFinishedError: 409,
    JobBusyError: 409,
    CallbackRefusedError: 422,
    QueueFullError: 503,
}


def status_for(exc: GnosisError) -> int:
    if isinstance(exc, ServiceError):
        return exc.status
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500
