"""Crash-safe file writes: a process-unique temp name, then a rename into place.

A killed writer leaves only ``*.gnosis-tmp-*`` files, which no reader takes for data and ``prune`` removes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from gnosis_ocr.errors import CacheReadOnlyError
from gnosis_ocr.modelcache.layout import TEMP_MARKER

_HOST = socket.gethostname().replace(".", "_")[:32] or "host"


def temp_path(path: Path) -> Path:
    """A sibling name unique to this process and call: ``<name>.gnosis-tmp-<host>-<pid>-<rand>``."""
    return path.with_name(f"{path.name}{TEMP_MARKER}{_HOST}-{os.getpid()}-{secrets.token_hex(4)}")


def ensure_dir(path: Path, *, cache: bool = True) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise (write_error(exc, path) if cache else exc) from exc


@contextlib.contextmanager
def atomic_writer(path: Path, *, cache: bool = True) -> Iterator[BinaryIO]:
    """Yield a binary file; on clean exit it is flushed, fsynced and renamed onto ``path``.

    ``cache``: a refused write is the model cache's ``CacheReadOnlyError``; other callers (job storage, batch
    results) pass False and get the ``OSError`` as it is."""
    ensure_dir(path.parent, cache=cache)
    tmp = temp_path(path)
    try:
        fh = tmp.open("xb")
    except OSError as exc:
        raise (write_error(exc, path) if cache else exc) from exc
    try:
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: Path, data: bytes, *, cache: bool = True) -> None:
    with atomic_writer(path, cache=cache) as fh:
        fh.write(data)


def write_error(exc: OSError, path: Path) -> Exception:
    """CacheReadOnlyError for a refused write (read-only mount, permissions), else ``exc`` itself."""
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return CacheReadOnlyError(
            f"Cannot write to the model cache at {path}: {exc.strerror}.",
            hint="The cache is read-only here (a read-only mount serves, it cannot warm). Run "
            "`gnosis-ocr cache warm` where the cache is writable, or push it with `gnosis-ocr cache push`.",
        )
    return exc
