"""The error tree. Every error says what happened, why, and what to do next.

    GnosisError
    ├── ConfigError (ValueError)               a setting or argument is unusable
    ├── CacheError                             the model cache
    │   ├── ModelNotCachedError (FileNotFoundError)   absent or incomplete, and downloads are off or failed
    │   ├── CacheCorruptError                  files on disk do not match the ready-manifest
    │   ├── CacheReadOnlyError (PermissionError)      a write was needed on a read-only cache
    │   └── HubError (ConnectionError)         the model hub could not give what was asked
    │       ├── RepoNotFoundError (LookupError)
    │       └── RevisionNotFoundError (LookupError)
    ├── PushError                              copying a snapshot to an object store failed
    ├── NetworkBlockedError (ConnectionError)  the offline guard refused a connection
    ├── DocumentError (ValueError)             an input document cannot be read as given
    │   ├── UnsupportedDocumentError           not a PDF/PNG/JPEG/TIFF/WebP by its content
    │   ├── EmptyDocumentError                 zero bytes, or no pages
    │   ├── EncryptedDocumentError             password-protected PDF
    │   ├── BrokenDocumentError                damaged file the renderer cannot open
    │   └── DocumentLimitError                 over a page, pixel or size limit (bomb guard)
    ├── EngineError                            an OCR engine could not run
    │   └── EngineUnavailableError             missing package, model or device for that engine
    ├── OutputWriteError (OSError)             results could not be written where they were asked for
    └── JobError                               a service job cannot be found or changed as asked
        ├── JobNotFoundError (LookupError)     no job has this id
        ├── JobFinishedError                   already finished (cannot cancel)
        ├── JobBusyError                       not in a state that allows the change (a page read again, say)
        ├── CallbackRefusedError (ValueError)  a callback_url the server will not call (scheme, private address)
        ├── JobOwnershipLostError              job.json changed since it was read (another instance took the job)
        ├── JobRecordUnreadableError           job.json is there but cannot be read (another version, damage)
        └── QueueFullError                     too many jobs waiting

Third-party exceptions are wrapped once, where they enter (``raise ... from exc``). Only the edges (``cli``,
``api``) translate these into exit codes or HTTP statuses.
"""

from __future__ import annotations


class GnosisError(Exception):
    """Base of every error gnosis-ocr raises on purpose.

    ``hint`` is the next step for the person reading the message, kept apart so edges can show it on its own line.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message} {self.hint}"


class ConfigError(GnosisError, ValueError):
    """A setting or an argument cannot be used as given."""


class CacheError(GnosisError):
    """Something about the model cache."""


class ModelNotCachedError(CacheError, FileNotFoundError):
    """The model is absent or incomplete in the cache and downloads are not allowed, or the download that would
    fill the miss failed (then ``__cause__`` is the HubError)."""


class CacheCorruptError(CacheError):
    """Files on disk disagree with the snapshot's ready-manifest."""


class CacheReadOnlyError(CacheError, PermissionError):
    """The cache would need a write but it is mounted or permissioned read-only."""


class HubError(CacheError, ConnectionError):
    """The model hub could not be reached or refused the request."""


class RepoNotFoundError(HubError, LookupError):
    """The hub does not know this repository (or the token cannot see it)."""


class RevisionNotFoundError(HubError, LookupError):
    """The repository exists but not this branch, tag or commit."""


class PushError(GnosisError):
    """A snapshot could not be copied to an object store."""


class NetworkBlockedError(GnosisError, ConnectionError):
    """The network guard refused a connection to a model hub in strict offline mode."""


class DocumentError(GnosisError, ValueError):
    """An input document cannot be read as given. Nothing stored is changed."""


class UnsupportedDocumentError(DocumentError):
    """The content is not a format gnosis-ocr reads (sniffed from bytes, never from the file name)."""


class EmptyDocumentError(DocumentError):
    """Zero bytes, or a document without pages."""


class EncryptedDocumentError(DocumentError):
    """A password-protected PDF."""


class BrokenDocumentError(DocumentError):
    """A damaged file that the renderer cannot open."""


class DocumentLimitError(DocumentError):
    """Over a configured limit (pages, pixels per page, total pixels, bytes): a guard against bombs."""


class EngineError(GnosisError):
    """An OCR engine could not run."""


class EngineUnavailableError(EngineError):
    """The engine's package, model or device is missing here."""


class OutputWriteError(GnosisError, OSError):
    """Results could not be written where they were asked for (a full disk, a bucket refusing the write)."""


class JobError(GnosisError):
    """A service job cannot be found or changed as asked."""


class JobNotFoundError(JobError, LookupError):
    """No job has this id (or it was deleted, or its retention time passed)."""


class JobFinishedError(JobError):
    """The job has already finished; it cannot be cancelled."""


class JobBusyError(JobError):
    """The job is not in a state that allows the change asked for (it runs, or that page is being read again)."""


class CallbackRefusedError(JobError, ValueError):
    """A ``callback_url`` the server will not call: not http(s), credentials in it, or an address that is not
    public (loopback, private, link-local, ...) without GNOSIS_WEBHOOK_ALLOWED_HOSTS naming its host."""


class JobRecordUnreadableError(JobError):
    """A job's ``job.json`` is there but is not a record this version can read (written by another version of
    gnosis-ocr, or damaged). The job is kept as it is (nothing stored is lost); HTTP 500, and DELETE still removes
    it. ``job_id`` names the job."""

    def __init__(self, message: str, *, job_id: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.job_id = job_id


class JobOwnershipLostError(JobError):
    """A conditional write of a job found the stored record changed (or gone) since this instance read it.

    On shared storage that means another instance has taken the job over (or it was deleted): this instance must
    stop working on it and write nothing more for it. ``job_id`` names the job."""

    def __init__(self, message: str, *, job_id: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.job_id = job_id


class QueueFullError(JobError):
    """Too many jobs are waiting; the upload is refused until some finish."""
