"""Real FUSE mounts of emulated buckets, for tests that serve a model cache from a bucket mount.

    with MotoS3() as s3, RcloneMount(s3, s3.new_bucket()) as mnt:
        (mnt.path / "hub").mkdir()

``RcloneMount`` runs ``rclone mount`` (Debian ``rclone`` + ``fuse3``) as a child process against a
``MotoS3`` or ``FakeGcs`` bucket with a private config file, cache folder and log; ``S3fsMount`` does
the same with s3fs-fuse (Debian ``s3fs``) for ``MotoS3``. Tests call ``fuse_available()`` (or
``s3fs_available()``) and skip with its reason when the tooling is absent.

What an rclone 1.60 mount (``--vfs-cache-mode writes``) gives, measured against moto and
fake-gcs-server on 2 cores (tests/support/test_fuse.py keeps the load-bearing ones honest):

* ``O_CREAT|O_EXCL``: atomic among processes on one mount (4 racers, exactly one wins, every round; the
  kernel serialises creates in a directory). NOT across two mounts of one bucket: both win, and rclone's
  post-upload md5 check then sees the other mount's object, calls it "corrupted on transfer" and
  deletes it, so the object may end up missing altogether. s3fs-fuse behaves the same way.
* ``os.replace`` onto an existing name works; the store sees the new content and no temp name.
* A closed file is uploaded asynchronously, ``--vfs-write-back`` after close (default here 2 s), so
  ``close()`` and ``fsync()`` (which succeeds) prove nothing about the store: call ``flush()``, which
  polls rclone's remote-control ``vfs/stats`` until no upload is queued or running. ``unmount()``
  flushes first; rclone itself drops pending write-backs when unmounted.
* Write-back 0 s is unsafe with rclone 1.60: a rename or ``utime`` right after close races the upload
  that has just started, and most final names never reach the store (they stay visible in the
  mount). A rename that lands while an upload is in flight can also leave the temp name behind in the
  store. Renaming within the write-back delay is safe.
* Other processes on the same mount see a closed file at once; a second mount of the bucket sees it
  within ``dir_cache_time`` (1 s here) after the upload, or at once after ``refresh()``.
* Size and mtime (``os.utime``) read back on both mounts (rclone keeps mtime in object metadata).
* Symlinks and hard links fail with EIO; s3fs-fuse has symlinks, hard links give ENOTSUP.
* A writer killed mid-write leaves its partial file in the mount and in the store (the handle is
  released and uploaded), so readers must never trust names that are not final.
* Reading 50 MB: local disk ~0.6-1.4 GB/s cold, 2-3 GB/s warm; through the mount ~160-220 MB/s (moto
  and fake-gcs-server alike; s3fs-fuse ~150-170); fsspec straight from the emulator ~180-350 MB/s.
* Large objects through rclone tripped a moto ETag race (fixed at server start, see objectstores).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Protocol, Self

from tests.support.objectstores import free_port, terminate


class _Store(Protocol):
    endpoint: str

    def rclone_remote(self) -> dict[str, str]: ...


_CHILD_ENV_DROP_PREFIXES = ("AWS_", "RCLONE_", "GOOGLE_", "STORAGE_EMULATOR_HOST")


def _which_fusermount() -> str | None:
    return shutil.which("fusermount3") or shutil.which("fusermount")


def _dev_fuse_problem() -> str | None:
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse on this machine"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable by this user"
    if _which_fusermount() is None:
        return "fusermount3 not found (apt-get install fuse3)"
    return None


def fuse_available() -> str | None:
    """None when rclone FUSE mounts can run here, else the reason they cannot (for ``pytest.skip``)."""
    problem = _dev_fuse_problem()
    if problem:
        return problem
    if shutil.which("rclone") is None:
        return "rclone not found (apt-get install rclone)"
    return None


def s3fs_available() -> str | None:
    """None when s3fs-fuse mounts can run here, else the reason they cannot."""
    problem = _dev_fuse_problem()
    if problem:
        return problem
    if shutil.which("s3fs") is None:
        return "s3fs not found (apt-get install s3fs)"
    return None


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # rclone's S3 backend fails when AWS_CA_BUNDLE is set, and RCLONE_* variables override the config
    # file, so the child sees neither; nor any cloud credential.
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CHILD_ENV_DROP_PREFIXES)}
    env.update(extra or {})
    return env


def _unmount(path: Path, timeout: float) -> None:
    fusermount = _which_fusermount() or "fusermount3"
    for flags in ("-u", "-uz"):
        if not os.path.ismount(path):
            return
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            subprocess.run([fusermount, flags, str(path)], capture_output=True, timeout=timeout, check=False)


def _stop_process(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)  # it exits by itself once unmounted and flushed
        return
    terminate(proc, timeout)


class _Mount:
    name = "mount"

    def __init__(self, mountpoint: Path | None, timeout: float) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix=f"gnosis-{self.name}-")
        self.workdir = Path(self._tmp.name)
        self.path = Path(mountpoint) if mountpoint is not None else self.workdir / "mnt"
        self.path.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self._timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None

    def _launch(self, argv: list[str], env: dict[str, str]) -> None:
        with (self.workdir / f"{self.name}.out").open("wb") as out:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env)
        deadline = time.monotonic() + self._timeout
        while not os.path.ismount(self.path):
            if self._proc.poll() is not None:
                detail = self.log_tail()
                self.unmount()
                raise RuntimeError(f"{self.name} exited with {self._proc.returncode}: {detail}")
            if time.monotonic() > deadline:
                detail = self.log_tail()
                self.unmount()
                raise RuntimeError(f"{self.name} did not mount {self.path} in {self._timeout:.0f}s: {detail}")
            time.sleep(0.05)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def mounted(self) -> bool:
        return os.path.ismount(self.path)

    def log_tail(self, chars: int = 3000) -> str:
        text = ""
        for path in (self.workdir / f"{self.name}.out", self.log_path):
            with contextlib.suppress(OSError):
                text += path.read_text(errors="replace")
        return text[-chars:]

    def flush(self, timeout: float = 30.0) -> None:
        """Return once every file closed so far has reached the object store (s3fs uploads on close)."""

    def refresh(self) -> None:
        """Forget cached listings so the next lookup asks the object store."""

    def unmount(self) -> None:
        """Flush pending uploads, unmount (``fusermount3 -u``, then lazy ``-uz``), stop the process and
        delete the private files. Safe to call twice."""
        if self.mounted and self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(TimeoutError, OSError):
                self.flush(timeout=self._timeout)
        _unmount(self.path, timeout=self._timeout)
        _stop_process(self._proc, timeout=self._timeout)
        _unmount(self.path, timeout=self._timeout)
        self._tmp.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unmount()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self._proc is not None and self._proc.poll() is None:
                _unmount(self.path, timeout=2.0)
                self._proc.kill()


class RcloneMount(_Mount):
    """``rclone mount remote:bucket`` of a ``MotoS3`` or ``FakeGcs`` bucket. Mounts on construction.

    ``write_back`` is ``--vfs-write-back`` (how long after close a file is uploaded); ``dir_cache_time``
    bounds how stale a listing may be (also what bounds cross-mount visibility); ``extra_args`` go last.
    """

    name = "rclone"

    def __init__(
        self,
        store: _Store,
        bucket: str,
        mountpoint: Path | None = None,
        *,
        subpath: str = "",
        read_only: bool = False,
        vfs_cache_mode: str = "writes",
        dir_cache_time: str = "1s",
        write_back: str = "2s",
        extra_args: tuple[str, ...] = (),
        timeout: float = 20.0,
    ) -> None:
        super().__init__(mountpoint, timeout)
        config = self.workdir / "rclone.conf"
        lines = ["[store]", *(f"{key} = {value}" for key, value in store.rclone_remote().items()), ""]
        config.write_text("\n".join(lines))
        config.chmod(0o600)
        remote = f"store:{bucket}" + (f"/{subpath.strip('/')}" if subpath.strip("/") else "")
        argv = ["rclone", "mount", remote, str(self.path), "--config", str(config)]
        argv += ["--cache-dir", str(self.workdir / "cache"), "--log-file", str(self.log_path)]
        argv += ["--log-level", "INFO", "--vfs-cache-mode", vfs_cache_mode]
        argv += ["--dir-cache-time", dir_cache_time, "--poll-interval", "0", "--vfs-write-back", write_back]
        self.rc_port = free_port()  # remote control on loopback: upload queue stats and cache flushes
        argv += ["--rc", "--rc-addr", f"127.0.0.1:{self.rc_port}", "--rc-no-auth"]
        if read_only:
            argv.append("--read-only")
        argv += list(extra_args)
        self.read_only = read_only
        self.remote = remote
        self._launch(argv, _child_env({"RCLONE_CONFIG": str(config), "HOME": str(self.workdir)}))

    def rc(self, command: str, **params: Any) -> dict[str, Any]:
        """Call rclone's remote-control API (``vfs/stats``, ``vfs/forget``, ``core/version``...)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.rc_port}/{command}",
            data=json.dumps(params).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=10) as response:
            result: dict[str, Any] = json.load(response)
        return result

    def pending_uploads(self) -> int:
        """Files closed but not yet in the object store (queued for write-back or uploading)."""
        disk = self.rc("vfs/stats").get("diskCache", {})
        return int(disk.get("uploadsQueued", 0)) + int(disk.get("uploadsInProgress", 0))

    def flush(self, timeout: float = 30.0, settle: float = 0.3) -> None:
        """Wait until no upload is queued or running, continuously for ``settle`` seconds (the kernel
        hands rclone a close asynchronously, so a zero right after ``close()`` proves nothing)."""
        if self.read_only:
            return
        deadline = time.monotonic() + timeout
        quiet_since: float | None = None
        while True:
            now = time.monotonic()
            if self.pending_uploads():
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= settle:
                return
            if now > deadline:
                raise TimeoutError(f"rclone still has uploads pending after {timeout:.0f}s: {self.log_tail()}")
            time.sleep(0.05)

    def refresh(self) -> None:
        """Drop rclone's directory cache (``vfs/forget``) so new objects in the bucket show at once."""
        self.rc("vfs/forget")


class S3fsMount(_Mount):
    """s3fs-fuse mount of a ``MotoS3`` bucket (path-style, plain HTTP). Mounts on construction."""

    name = "s3fs"

    def __init__(
        self,
        store: _Store,
        bucket: str,
        mountpoint: Path | None = None,
        *,
        read_only: bool = False,
        extra_options: tuple[str, ...] = (),
        timeout: float = 20.0,
    ) -> None:
        super().__init__(mountpoint, timeout)
        remote = store.rclone_remote()
        if remote.get("type") != "s3":
            raise ValueError("S3fsMount needs an S3 store (MotoS3)")
        passwd = self.workdir / "passwd-s3fs"
        passwd.write_text(f"{remote['access_key_id']}:{remote['secret_access_key']}\n")
        passwd.chmod(0o600)
        options = [
            f"passwd_file={passwd}",
            f"url={store.endpoint}",
            "use_path_request_style",
            f"endpoint={remote['region']}",
            "stat_cache_expire=1",
            f"logfile={self.log_path}",
            "dbglevel=warn",
        ]
        if read_only:
            options.append("ro")
        options += list(extra_options)
        argv = ["s3fs", bucket, str(self.path), "-f", "-o", ",".join(options)]
        self.read_only = read_only
        self._launch(argv, _child_env({"HOME": str(self.workdir)}))
