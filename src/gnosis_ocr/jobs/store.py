"""Where the service keeps jobs: a local folder (default) or an object store through fsspec.

Layout under the storage root::

    jobs/<id>/job.json          the JobRecord (written whole: temp + rename locally, one PUT on a bucket)
    jobs/<id>/inputs/<index>    the uploaded bytes; the original name lives only inside job.json
    jobs/<id>/pages/<n>.webp    page images for display (WebP, at most ``IMAGE_PIXELS``)
    jobs/<id>/pages/<n>.words.json  a finished page's pixel frame, size in points and word boxes (searchable PDF)
    instances/<instance>.json   each running instance's heartbeat (shared storage takes over silent ones)

Every path is built from a validated job id and integers, never from a name a user sent.

Who owns a job is decided by the store itself, never by a lock through a mount. ``load_versioned`` returns the record
with an opaque version token of the object it read, and ``save(record, expect=token)`` writes only if ``job.json``
is still at that version (``expect=ABSENT``: only if there is none yet), else raises ``JobOwnershipLostError``:

* ``gs://``: the token is the object's generation; the write is one multipart upload with ``ifGenerationMatch``
  (``0`` for ABSENT). Multipart, not ``uploadType=media``: GCS honours the precondition on both, fake-gcs-server
  (the emulator the tests use) only on multipart and resumable uploads.
* ``s3://``: the token is the ETag (the MD5 of the body for a plain PUT: it names the content, not the write, which
  is enough because a decision taken on a record holds for any record with the same bytes); the write is a PutObject
  with ``If-Match`` (``If-None-Match: *`` for ABSENT). A 409 ConditionalRequestConflict is retried, as AWS advises.
* a local folder: the token is inode, mtime (ns) and size of ``job.json``; check and rename happen under ``flock``
  on the job's folder. That is correct for processes on one host only, which is all a local folder serves: local
  storage is never shared between instances (a network file system as GNOSIS_STORAGE is not supported).

The conditional writes themselves live in ``gnosis_ocr/conditional.py`` (shared with the model cache's lease).

A transport retry can resend a conditional write that had already landed; the store then sees its own bytes under a
new version and returns that version instead of reporting a loss.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from gnosis_ocr.conditional import ABSENT, PreconditionFailed, put_if, read_versioned, store_kind
from gnosis_ocr.errors import ConfigError, JobOwnershipLostError, JobRecordUnreadableError
from gnosis_ocr.jobs.record import JobRecord, valid_job_id
from gnosis_ocr.modelcache.fsutil import atomic_write_bytes

__all__ = ["ABSENT", "IMAGE_EXT", "IMAGE_PIXELS", "IMAGE_TYPE", "JobStore"]  # ABSENT: save(expect=ABSENT), create only

logger = logging.getLogger(__name__)

IMAGE_EXT, IMAGE_TYPE = "webp", "image/webp"
IMAGE_PIXELS = 2_000_000  # page images are kept for display at most this size (the OCR saw the full render)


class JobStore:
    def __init__(self, url: str, *, filesystem: Any = None) -> None:
        import fsspec.core
        from fsspec.implementations.local import LocalFileSystem

        self.url = url
        try:
            if filesystem is not None:
                fs, root = filesystem, filesystem._strip_protocol(url)
            else:
                fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            raise ConfigError(
                f"GNOSIS_STORAGE={url!r} cannot be opened: {exc}",
                hint="Use a local folder, or gs://bucket/prefix with pip install 'gnosis-ocr[gcs]' "
                "(s3://bucket/prefix with the s3 extra).",
            ) from exc
        self.fs = fs
        self.root = str(root).rstrip("/")
        self.local = isinstance(fs, LocalFileSystem)
        self._kind = _store_kind(fs, self.local)
        if self.local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
            self.staging_root = Path(self.root) / "staging"
        else:
            self.staging_root = Path(tempfile.gettempdir()) / "gnosis-ocr" / "staging"
        self.staging_root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"JobStore({self.url!r})"

    # -- paths -------------------------------------------------------------------------------------------

    def _job_dir(self, job_id: str) -> str:
        if not valid_job_id(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return f"{self.root}/jobs/{job_id}"

    def _input_path(self, job_id: str, index: int) -> str:
        return f"{self._job_dir(job_id)}/inputs/{int(index)}"

    def _record_path(self, job_id: str) -> str:
        return f"{self._job_dir(job_id)}/job.json"

    def _image_path(self, job_id: str, n: int, ext: str = IMAGE_EXT) -> str:
        return f"{self._job_dir(job_id)}/pages/{int(n)}.{ext}"

    # -- low level ---------------------------------------------------------------------------------------

    def _write(self, path: str, data: bytes) -> None:
        if self.local:
            atomic_write_bytes(Path(path), data, cache=False)
        else:
            self.fs.pipe_file(path, data)

    def _read(self, path: str) -> bytes | None:
        try:
            data: bytes = self.fs.cat_file(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return data

    # -- staging -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A private folder for one upload's files; removed afterwards, whatever happened."""
        path = Path(tempfile.mkdtemp(prefix="upload-", dir=self.staging_root))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def clean_staging(self, older_than: float) -> int:
        """Remove staging folders untouched for ``older_than`` seconds (uploads a killed process left); the number
        removed."""
        cutoff = time.time() - older_than
        removed = 0
        for folder in self.staging_root.glob("upload-*"):
            try:
                if folder.stat().st_mtime <= cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    # -- jobs --------------------------------------------------------------------------------------------

    def save(self, record: JobRecord, *, expect: str | None = None) -> str | None:
        """Write ``job.json``; return the version now stored where it is known cheaply (else None).

        ``expect=None`` writes unconditionally. ``expect=<token from load_versioned or an earlier save>`` writes
        only if the stored record is still at that version, ``expect=ABSENT`` only if there is none; otherwise
        JobOwnershipLostError: another instance changed or took the job (or it was deleted), so stop working on it.
        """
        path = self._record_path(record.id)
        data = record.model_dump_json().encode()
        if expect is None:
            if self.local:
                return self._local_save(record.id, path, data, None)
            return _put_token(self.fs.pipe_file(path, data))
        if self._kind is None:
            raise self._unsupported()
        try:
            if self.local:
                return self._local_save(record.id, path, data, expect)
            remote = store_kind(self.fs)
            if remote is None:
                raise self._unsupported()
            return put_if(self.fs, remote, path, data, expect)
        except PreconditionFailed:
            pass
        current = self._read_versioned(path)
        if current is not None and current[0] == data:
            # Our own write landed earlier (a transport retry resent it and met its own new version).
            return current[1]
        raise self._lost(record.id, expect)

    def load(self, job_id: str) -> JobRecord | None:
        """The stored record; None when there is none. JobRecordUnreadableError when ``job.json`` is there but
        cannot be read: such a job neither vanishes nor counts as absent (see ``record_age``)."""
        if not valid_job_id(job_id):
            return None
        data = self._read(self._record_path(job_id))
        return None if data is None else _parse_record(job_id, data)

    @property
    def conditional(self) -> bool:
        """Conditional writes (``save(expect=...)``, ``load_versioned``) work on this store."""
        return self._kind is not None

    def load_versioned(self, job_id: str) -> tuple[JobRecord, str] | None:
        """The record and the version token of the very object read (for ``save(..., expect=token)``)."""
        if not valid_job_id(job_id):
            return None
        if self._kind is None:
            raise self._unsupported()
        read = self._read_versioned(self._record_path(job_id))
        if read is None:
            return None
        return _parse_record(job_id, read[0]), read[1]

    # -- conditional writes ------------------------------------------------------------------------------

    def _read_versioned(self, path: str) -> tuple[bytes, str] | None:
        """Body and version of one object, from one read (never a stat and a read that could straddle a write)."""
        try:
            if self._kind == "local":
                with Path(path).open("rb") as fh:
                    return fh.read(), _local_token(os.fstat(fh.fileno()))
            remote = store_kind(self.fs)
            if remote is not None:
                return read_versioned(self.fs, remote, path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        raise self._unsupported()

    def _local_save(self, job_id: str, path: str, data: bytes, expect: str | None) -> str:
        # Unconditional saves take the lock too, so no write slips between a conditional save's check and rename.
        with self._local_lock(job_id, create=expect in (None, ABSENT)):
            if expect is not None:
                try:
                    current: str | None = _local_token(Path(path).stat())
                except FileNotFoundError:
                    current = None
                if current != (None if expect == ABSENT else expect):
                    raise PreconditionFailed
            atomic_write_bytes(Path(path), data, cache=False)
            return _local_token(Path(path).stat())

    @contextlib.contextmanager
    def _local_lock(self, job_id: str, *, create: bool) -> Iterator[None]:
        """An exclusive flock on the job's folder (one host only; released when the descriptor closes)."""
        folder = Path(self._job_dir(job_id))
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError as exc:
            if not create:
                raise PreconditionFailed from exc  # the job was deleted since it was read
            folder.mkdir(parents=True, exist_ok=True)  # deleted between mkdir and open: as an unlocked write would
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _lost(self, job_id: str, expect: str) -> JobOwnershipLostError:
        if expect == ABSENT:
            what = f"Job {job_id} already has a record in {self.url}: another instance created or took it first."
        else:
            what = (
                f"Job {job_id} changed in {self.url} since this instance read it (job.json is no longer at version "
                f"{expect}): another instance has taken the job over, or it was deleted."
            )
        return JobOwnershipLostError(
            what,
            job_id=job_id,
            hint="This instance must stop working on the job and write nothing more for it; its owner carries on.",
        )

    def _unsupported(self) -> ConfigError:
        return ConfigError(
            f"GNOSIS_STORAGE={self.url!r} has no conditional writes here, so job ownership cannot be decided.",
            hint="Use a local folder (one instance), gs://bucket/prefix or s3://bucket/prefix.",
        )

    def record_age(self, job_id: str) -> float | None:
        """Seconds since ``job.json`` was last written (None: no record, or a store that cannot say): how the
        sweep ages a record it cannot read."""
        path = self._record_path(job_id)
        try:
            if self.local:
                return max(0.0, time.time() - Path(path).stat().st_mtime)
            modified: datetime = self.fs.modified(path)
        except (FileNotFoundError, NotImplementedError):
            return None
        if modified.tzinfo is None:  # fsspec's local and some remote filesystems answer naive UTC
            modified = modified.replace(tzinfo=UTC)
        return max(0.0, time.time() - modified.timestamp())

    def job_ids(self) -> list[str]:
        try:
            names = self.fs.ls(f"{self.root}/jobs", detail=False)
        except FileNotFoundError:
            return []
        ids = (str(name).rstrip("/").rsplit("/", 1)[-1] for name in names)
        return sorted(i for i in ids if valid_job_id(i))

    def delete(self, job_id: str) -> None:
        path = self._job_dir(job_id)
        if self.local:
            shutil.rmtree(path, ignore_errors=True)
            return
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(path, recursive=True)

    # -- inputs ------------------------------------------------------------------------------------------

    def put_input(self, job_id: str, index: int, staged: Path) -> None:
        """Move a staged upload into the job (renamed on local disk, uploaded to a bucket)."""
        dest = self._input_path(job_id, index)
        if self.local:
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(staged, dest)
        else:
            self.fs.put_file(str(staged), dest)
            staged.unlink(missing_ok=True)

    def has_input(self, job_id: str, index: int) -> bool:
        return bool(self.fs.exists(self._input_path(job_id, index)))

    @contextlib.contextmanager
    def input_file(self, job_id: str, index: int) -> Iterator[Path]:
        """A local path to the input (the stored file itself on local disk, a temporary copy otherwise).

        FileNotFoundError when the input is gone."""
        path = self._input_path(job_id, index)
        if self.local:
            if not Path(path).is_file():
                raise FileNotFoundError(path)
            yield Path(path)
            return
        with tempfile.TemporaryDirectory(prefix="gnosis-input-") as tmp:
            local = Path(tmp) / "input"
            self.fs.get_file(path, str(local))
            yield local

    # -- page images -------------------------------------------------------------------------------------

    def put_image(self, job_id: str, n: int, data: bytes) -> None:
        """A page image encoded as ``IMAGE_TYPE``."""
        self._write(self._image_path(job_id, n), data)

    def image(self, job_id: str, n: int) -> tuple[bytes, str] | None:
        """(bytes, media type) of a page image; PNG for jobs stored before images became WebP."""
        if not valid_job_id(job_id):
            return None
        data = self._read(self._image_path(job_id, n))
        if data is not None:
            return data, IMAGE_TYPE
        older = self._read(self._image_path(job_id, n, "png"))
        return (older, "image/png") if older is not None else None

    def put_words(self, job_id: str, n: int, data: bytes) -> None:
        """A finished page's geometry for the searchable PDF (``jobs.searchable.PageGeometry``, JSON)."""
        self._write(self._image_path(job_id, n, "words.json"), data)

    def words(self, job_id: str, n: int) -> bytes | None:
        if not valid_job_id(job_id):
            return None
        return self._read(self._image_path(job_id, n, "words.json"))

    # -- instances ---------------------------------------------------------------------------------------

    def heartbeat(self, instance: str) -> None:
        body = {"instance": instance, "pid": os.getpid(), "at": time.time()}
        self._write(f"{self.root}/instances/{instance}.json", json.dumps(body).encode())

    def instance_seen(self, instance: str) -> float | None:
        """When ``instance`` last wrote its heartbeat (epoch seconds), None if never or unreadable."""
        if not instance.replace("-", "").isalnum():
            return None
        data = self._read(f"{self.root}/instances/{instance}.json")
        if data is None:
            return None
        try:
            return float(json.loads(data)["at"])
        except (ValueError, KeyError, TypeError):
            return None

    def forget_instance(self, instance: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(f"{self.root}/instances/{instance}.json")


# -- helpers -----------------------------------------------------------------------------------------------


def _store_kind(fs: Any, local: bool) -> Literal["local", "gcs", "s3"] | None:
    """Which conditional-write protocol this filesystem speaks (None: none that the store knows)."""
    return "local" if local else store_kind(fs)


def _parse_record(job_id: str, data: bytes) -> JobRecord:
    """The record in ``data``; JobRecordUnreadableError when it is not one this version reads. The bytes stay where
    they are: a newer instance sharing the storage may have written them, and only it may change them."""
    try:
        return JobRecord.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the document"
        raise JobRecordUnreadableError(
            f"Job {job_id}'s record (job.json, {len(data)} bytes) cannot be read by this version of gnosis-ocr: "
            f"{exc.error_count()} problem(s), first at {where}: {first['msg']}. It was written by another version, "
            "or it is damaged; it is kept as it is.",
            job_id=job_id,
            hint=f"Serve it with the version that wrote it, or remove it with DELETE /api/v1/jobs/{job_id}; the "
            "retention sweep removes it once it is older than GNOSIS_JOB_TTL_SECONDS.",
        ) from exc


def _local_token(st: os.stat_result) -> str:
    # Every save renames a new file into place: a new inode, mtime and often size. One host only (see module doc).
    return f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"


def _put_token(out: object) -> str | None:
    """The version in an unconditional ``pipe_file`` answer: gcsfs returns the object resource (``generation``)
    for a simple upload, s3fs the PutObject response (``ETag``); anything else is unknown."""
    if isinstance(out, dict):
        token = out.get("generation") or out.get("ETag")
        return str(token) if token else None
    return None
