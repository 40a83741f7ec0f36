"""The download lease as an object in the cache's bucket, decided by the object store's conditional writes.

Each Cloud Run instance has its own gcsfuse mount, and an exclusive create through one mount is invisible to the
others: four instances on an empty bucket all won the file lease and downloaded the model four times. Given the
bucket behind the cache root (``GNOSIS_CACHE_BUCKET=gs://bucket/prefix``, where ``prefix`` is the folder the cache
root is in the bucket), the lease object is the very object the mount shows as ``.gnosis/lease.json`` (same JSON as
the file lease, so ``status`` and ``prune`` read it through the mount), but it is written only through the store:

* take: create with ``ifGenerationMatch=0`` / ``If-None-Match: *``; of many instances exactly one succeeds;
* take over a lease whose expiry has passed (its writer died or hangs): write conditional on the stale version,
  so of several instances taking over, one wins;
* renew every TTL/3 conditional on the version last written: a writer that was taken over learns it and stops;
* give up: after a failure, delete conditional on our version (others take over at once); after success, shorten
  the expiry to a short settle time instead of deleting, because a mount may show our last files elsewhere a little
  after we closed them (rclone uploads after a write-back delay; gcsfuse on close) and a waiter that found the
  lease gone before it saw the manifest would download again.

The store's clock is not consulted: expiry is ``time.time()`` of the writer plus the TTL, read against the
reader's clock (instances keep NTP time; a TTL of a minute dwarfs their skew). Any error of the store is logged
once and taken as "not held" (read), "left to expire" (release) or "write without it" (take): correctness never
depends on the lease, the manifest written last does.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path, PurePosixPath
from typing import Any

from gnosis_ocr.conditional import ABSENT, PreconditionFailed, StoreKind, delete_if, put_if, read_versioned
from gnosis_ocr.errors import ConfigError
from gnosis_ocr.modelcache.lease import LeaseInfo, OnceLog

logger = logging.getLogger(__name__)

SETTLE_SECONDS = 15.0  # at most this long a finished writer's lease outlives it (see module docstring)

# What a store client can raise: OSError (s3fs, gcsfs's translated HTTP errors), gcsfs.retry.HttpError (an
# Exception), aiohttp / botocore errors, timeouts. The lease is best effort, so any of them means "no lease".
StoreError = Exception


def lease_object_path(bucket_url: str, cache_root: Path, lease_path: Path) -> str:
    """``bucket/prefix/hub/models--org--name/.gnosis/lease.json`` for the lease file at ``lease_path``."""
    relative = PurePosixPath(lease_path.relative_to(cache_root).as_posix())
    _, rest = split_bucket_url(bucket_url)
    return f"{rest}/{relative}"


def split_bucket_url(url: str) -> tuple[StoreKind, str]:
    """('gcs', 'bucket/prefix') from 'gs://bucket/prefix/'; ConfigError for anything else."""
    protocol, sep, rest = url.partition("://")
    rest = rest.strip("/")
    kinds: dict[str, StoreKind] = {"gs": "gcs", "gcs": "gcs", "s3": "s3"}
    if not sep or protocol not in kinds or not rest or ".." in rest.split("/"):
        raise ConfigError(
            f"GNOSIS_CACHE_BUCKET={url!r} is not a bucket URL.",
            hint="Set it to the bucket and folder the cache root is mounted from, e.g. gs://my-models/huggingface "
            "for MODEL_CACHE_PATH=/cache/huggingface with gs://my-models mounted at /cache (s3://... for S3).",
        )
    return kinds[protocol], rest


def open_bucket(url: str, storage_options: dict[str, Any] | None = None) -> Any:
    """The fsspec filesystem for ``url`` (gcsfs / s3fs, credentials from the environment as they find them)."""
    import fsspec

    kind, _ = split_bucket_url(url)
    try:
        return fsspec.filesystem("gs" if kind == "gcs" else "s3", **(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise ConfigError(
            f"GNOSIS_CACHE_BUCKET={url!r} cannot be opened: {exc}",
            hint="pip install 'gnosis-ocr[gcs]' (or the s3 extra), or unset GNOSIS_CACHE_BUCKET to use the file "
            "lease (which does not coordinate separate mounts).",
        ) from exc


class ObjectLease:
    """A ``LeaseHolder`` kept as one object in a bucket (``path`` is ``bucket/key``, as fsspec names it)."""

    def __init__(
        self,
        fs: Any,
        kind: StoreKind,
        path: str,
        ttl: float,
        *,
        settle: float = SETTLE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.fs = fs
        self.kind = kind
        self.path = path
        self.ttl = ttl
        self.settle = settle
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"
        self._clock = clock
        self._token: str | None = None  # version of our lease object while we hold it
        self._lock = threading.Lock()
        self._usable = True
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._failed = OnceLog(f"{kind}:{path}")

    @property
    def held(self) -> bool:
        return self._token is not None

    @property
    def usable(self) -> bool:
        return self._usable

    def _body(self, lifetime: float) -> bytes:
        now = self._clock()
        info = LeaseInfo(self.owner, socket.gethostname(), os.getpid(), now, now + lifetime)
        return json.dumps(asdict(info)).encode()

    def _read(self) -> tuple[LeaseInfo | None, str] | None:
        """(lease, version) as stored, (None, version) for an object that is not a lease; None when absent.
        Store errors propagate."""
        got = read_versioned(self.fs, self.kind, self.path)
        if got is None:
            return None
        body, token = got
        try:
            return LeaseInfo(**json.loads(body)), token
        except (ValueError, TypeError):
            return None, token  # objects appear whole, so this is no writer mid-write: garbage, take it over

    def read(self) -> LeaseInfo | None:
        try:
            got = self._read()
        except StoreError as exc:
            self._failed("read", exc, "taking it as not held")
            return None
        return None if got is None else got[0]

    def try_acquire(self) -> bool:
        try:
            got = self._read()
            if got is None:
                expect = ABSENT
            else:
                current, expect = got
                # Expiry only, never "its pid is gone on this host": containers share host names and pids, and a
                # finished writer's settle lease outlives its process on purpose.
                if current is not None and not current.expired(self._clock()):
                    return False
                if current is not None:
                    logger.info("taking over the expired cache lease of %s (pid %d)", current.host, current.pid)
            token = put_if(self.fs, self.kind, self.path, self._body(self.ttl), expect)
        except PreconditionFailed:
            return False  # another instance created or took it over between our read and our write
        except StoreError as exc:
            self._failed("take", exc, "writing without it")
            self._usable = False
            return False
        with self._lock:
            self._token = token
        self._start_heartbeat()
        return True

    def renew(self) -> bool:
        """Extend our lease by a TTL, only if it is still the version we wrote. False once it was taken over."""
        with self._lock:
            if self._token is None:
                return False
            try:
                self._token = put_if(self.fs, self.kind, self.path, self._body(self.ttl), self._token)
            except PreconditionFailed:
                logger.warning("cache lease %s was taken over by another instance", self.path)
                self._token = None
                return False
        return True

    def _start_heartbeat(self) -> None:
        self._stop.clear()

        def beat() -> None:
            while not self._stop.wait(self.ttl / 3):
                try:
                    if not self.renew():
                        return
                except StoreError as exc:  # a flaky store must not kill the download
                    self._failed("renew", exc, "trying again")

        self._heartbeat = threading.Thread(target=beat, name="cache-object-lease", daemon=True)
        self._heartbeat.start()

    def release(self, *, finished: bool = False) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
            self._heartbeat = None
        with self._lock:
            token, self._token = self._token, None
        if token is None:
            return
        try:
            if finished:
                put_if(self.fs, self.kind, self.path, self._body(self.settle), token)
            else:
                delete_if(self.fs, self.kind, self.path, token)
        except PreconditionFailed:
            pass  # taken over meanwhile: it is someone else's now
        except StoreError as exc:
            self._failed("release", exc, "leaving it to expire")


def object_lease(bucket_url: str, cache_root: Path, lease_path: Path, ttl: float, *, fs: Any = None) -> ObjectLease:
    """The object lease for the file lease at ``lease_path`` of the cache rooted at ``cache_root``."""
    kind, _ = split_bucket_url(bucket_url)
    return ObjectLease(
        fs if fs is not None else open_bucket(bucket_url),
        kind,
        lease_object_path(bucket_url, cache_root, lease_path),
        ttl,
    )
