"""Where the service keeps jobs: a local folder (default) or an object store through fsspec.

Layout under the storage root::

    jobs/<id>/job.json          the JobRecord (written whole: temp + rename locally, one PUT on a bucket)
    jobs/<id>/inputs/<index>    the uploaded bytes; the original name lives only inside job.json
    jobs/<id>/pages/<n>.png     page images as the engine saw them
    instances/<instance>.json   each running instance's heartbeat (shared storage takes over silent ones)

Every path is built from a validated job id and integers, never from a name a user sent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gnosis_ocr.errors import ConfigError
from gnosis_ocr.jobs.record import JobRecord, valid_job_id
from gnosis_ocr.modelcache.fsutil import atomic_write_bytes

logger = logging.getLogger(__name__)


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

    def _image_path(self, job_id: str, n: int) -> str:
        return f"{self._job_dir(job_id)}/pages/{int(n)}.png"

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

    # -- jobs --------------------------------------------------------------------------------------------

    def save(self, record: JobRecord) -> None:
        self._write(f"{self._job_dir(record.id)}/job.json", record.model_dump_json().encode())

    def load(self, job_id: str) -> JobRecord | None:
        if not valid_job_id(job_id):
            return None
        data = self._read(f"{self._job_dir(job_id)}/job.json")
        if data is None:
            return None
        try:
            return JobRecord.model_validate_json(data)
        except ValidationError as exc:
            logger.warning("job %s: unreadable job.json (%s); ignoring it", job_id, exc.error_count())
            return None

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

    def put_image(self, job_id: str, n: int, png: bytes) -> None:
        self._write(self._image_path(job_id, n), png)

    def image(self, job_id: str, n: int) -> bytes | None:
        return self._read(self._image_path(job_id, n)) if valid_job_id(job_id) else None

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
