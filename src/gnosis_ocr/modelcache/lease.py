"""A best-effort single-writer lease: a small file with an owner and an expiry, renewed while downloading.

It keeps many instances starting on an empty bucket from downloading the same bytes. It is *best effort*:
bucket mounts have no cross-host locks, so two writers can still overlap; correctness never depends on the
lease (every file is written under a unique temp name, renamed into place, and the manifest comes last).

Creation uses ``O_CREAT | O_EXCL`` (atomic within one host and one mount), then reads the file back to
catch a cross-host race. A lease whose expiry has passed, or whose owner is a dead process on this host, is
stale and may be broken. That only coordinates processes behind one mount: separate mounts of one bucket (one per
Cloud Run instance) each win an exclusive create. With the bucket known (``GNOSIS_CACHE_BUCKET``) the lease is
taken through the object store's own conditional writes instead (``objectlease.py``); both speak ``LeaseHolder``.

A lease that cannot be read or removed (EIO from a mount whose objects change under another instance) never stops
a warm: it reads as not held, a failed removal leaves it to expire, a failed create writes without the lease; each
kind of failure is logged once per lease.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Protocol

from gnosis_ocr.modelcache.fsutil import atomic_write_bytes, ensure_dir, temp_path, write_error

logger = logging.getLogger(__name__)

Outcome = Literal["acquired", "done", "timeout", "unleased"]
"""``unleased``: the lease itself cannot be used here (its create failed); the caller writes without it."""


class LeaseHolder(Protocol):
    """What ``writer_lease`` needs of a lease: a file through the cache's filesystem, or an object in its bucket."""

    @property
    def usable(self) -> bool:
        """False once creating the lease failed for a reason other than "someone holds it"."""
        ...

    def read(self) -> LeaseInfo | None: ...

    def try_acquire(self) -> bool: ...

    def release(self, *, finished: bool = False) -> None:
        """Stop renewing and give the lease up (``finished``: after a successful write)."""
        ...


class OnceLog:
    """Warn the first time each kind of lease failure happens, then only at debug level (a flaky mount fails
    every poll, and one line says what it needs to)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._seen: set[str] = set()

    def __call__(self, action: str, exc: BaseException, consequence: str) -> None:
        if action not in self._seen:
            self._seen.add(action)
            logger.warning("could not %s cache lease %s (%s); %s", action, self.what, exc, consequence)
        logger.debug("cache lease %s: %s failed", self.what, action, exc_info=exc)


@dataclass(frozen=True)
class LeaseInfo:
    owner: str
    host: str
    pid: int
    acquired_at: float
    expires_at: float

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    def owner_dead(self) -> bool:
        """True only when we can tell: same host and the pid is gone."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


class Lease:
    def __init__(self, path: Path, ttl: float, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.ttl = ttl
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"
        self._clock = clock
        self._held = False
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._usable = True
        self._unreadable = False  # the last read() failed (as opposed to finding no lease)
        self._failed = OnceLog(str(path))

    @property
    def held(self) -> bool:
        return self._held

    @property
    def usable(self) -> bool:
        return self._usable

    def _info(self) -> LeaseInfo:
        now = self._clock()
        return LeaseInfo(self.owner, socket.gethostname(), os.getpid(), now, now + self.ttl)

    def read(self) -> LeaseInfo | None:
        """The lease as stored; None when there is none, or when it cannot be read (logged: "not held")."""
        self._unreadable = False
        try:
            doc = json.loads(self.path.read_bytes())
            return LeaseInfo(**doc)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            # Empty or half-written: a writer between create and write, or one that died there. Young, it
            # counts as held; once untouched for a whole TTL, as expired.
            try:
                mtime = self.path.stat().st_mtime
            except FileNotFoundError:
                return None
            except OSError as exc:
                self._read_failed(exc)
                return None
            return LeaseInfo("?", "?", -1, mtime, mtime + self.ttl)
        except OSError as exc:
            self._read_failed(exc)
            return None

    def _read_failed(self, exc: OSError) -> None:
        self._failed("read", exc, "taking it as not held")
        self._unreadable = True

    def try_acquire(self) -> bool:
        ensure_dir(self.path.parent)
        current = self.read()
        if current is not None:
            if not (current.expired(self._clock()) or current.owner_dead()):
                return False
            self._break(current)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if self._unreadable:  # there is a lease we cannot read: not held, as far as we can tell
                self._usable = False
            return False
        except OSError as exc:
            error = write_error(exc, self.path)
            if error is not exc:
                raise error from exc  # a read-only cache: the write that follows could not succeed either
            self._failed("create", exc, "writing without it")
            self._usable = False
            return False
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(json.dumps(asdict(self._info())).encode())
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            self._failed("write", exc, "writing without it")
            self._usable = False
            with contextlib.suppress(OSError):
                self.path.unlink()
            return False
        # Another host may have created the same object at the same moment (the last write wins), and a mount
        # may replace files non-atomically: confirm ownership once more after a short settle.
        check = self.read()
        if check is not None and check.owner == self.owner:
            time.sleep(min(0.2, self.ttl / 20))
            check = self.read()
        # Unreadable right after our exclusive create: ours, as far as anyone can tell.
        self._held = check.owner == self.owner if check is not None else self._unreadable
        if self._held:
            self._start_heartbeat()
        return self._held

    def _break(self, stale: LeaseInfo) -> None:
        """Move a stale lease aside (rename is atomic: of several breakers one wins) and delete it."""
        logger.info("breaking stale cache lease of %s (pid %d)", stale.host, stale.pid)
        aside = temp_path(self.path)
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        except OSError as exc:
            self._failed("break", exc, "trying again at the next poll")
            return
        try:
            aside.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._failed("remove", exc, f"leaving {aside.name} for `gnosis-ocr cache prune`")

    def renew(self) -> bool:
        current = self.read()  # None: pruned, or unreadable for a moment; our own lease either way
        if current is not None and current.owner != self.owner:
            logger.warning("cache lease %s was taken over by %s", self.path, current.owner)
            self._held = False
            return False
        atomic_write_bytes(self.path, json.dumps(asdict(self._info())).encode())
        return True

    def _start_heartbeat(self) -> None:
        self._stop.clear()

        def beat() -> None:
            while not self._stop.wait(self.ttl / 3):
                try:
                    if not self.renew():
                        return
                except OSError as exc:  # a flaky mount must not kill the download
                    logger.warning("could not renew cache lease %s: %s", self.path, exc)

        self._heartbeat = threading.Thread(target=beat, name="cache-lease", daemon=True)
        self._heartbeat.start()

    def release(self, *, finished: bool = False) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
            self._heartbeat = None
        if not self._held:
            return
        self._held = False
        current = self.read()
        if current is not None and current.owner == self.owner:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                self._failed("remove", exc, "leaving it to expire")


@contextlib.contextmanager
def writer_lease(
    path: Path,
    *,
    ttl: float,
    wait: float,
    done: Callable[[], bool],
    poll: float = 0.5,
    on_wait: Callable[[LeaseInfo | None], None] | None = None,
    lease: LeaseHolder | None = None,
) -> Iterator[Outcome]:
    """Become the writer, or wait for the current one.

    Yields ``"done"`` when ``done()`` turned true while waiting (another writer finished), ``"acquired"`` when
    this process holds the lease, or ``"timeout"`` when ``wait`` seconds passed (the caller then writes without
    the lease: correctness does not depend on it), ``"unleased"`` when the lease cannot be created here (the caller
    writes without it). Every loop is bounded by ``wait``. ``lease`` replaces the file lease at ``path`` (the
    object-store lease of ``objectlease.py``).
    """
    if lease is None:
        lease = Lease(path, ttl)
    deadline = time.monotonic() + wait
    waited = False
    outcome: Outcome = "timeout"
    while True:
        if done():
            outcome = "done"
            break
        if lease.try_acquire():
            outcome = "acquired"
            break
        if not lease.usable:
            outcome = "unleased"
            break
        if time.monotonic() >= deadline:
            logger.warning("cache lease %s still held after %.0f s; writing without it", path, wait)
            break
        if not waited and on_wait is not None:
            on_wait(lease.read())
        waited = True
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
    try:
        yield outcome
    except BaseException:
        lease.release()
        raise
    lease.release(finished=True)
