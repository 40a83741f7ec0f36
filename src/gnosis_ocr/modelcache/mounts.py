"""Which filesystem holds the cache: a bucket mount (gcsfuse, rclone, s3fs), read-only or not, and which bucket
it shows where the mount table says so unambiguously."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

logger = logging.getLogger(__name__)

FUSE_BUCKET_TYPES = ("fuse.gcsfuse", "fuse.rclone", "fuse.s3fs", "fuse.mountpoint-s3", "fuse")


@dataclass(frozen=True)
class MountInfo:
    mountpoint: str
    fstype: str
    read_only: bool

    @property
    def is_bucket(self) -> bool:
        return self.fstype.startswith("fuse")


def parse_mounts(text: str) -> list[MountInfo]:
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            point = parts[1].replace("\\040", " ")
            out.append(MountInfo(point, parts[2], "ro" in parts[3].split(",")))
    return out


def mount_of(path: Path, mounts_file: Path = Path("/proc/mounts")) -> MountInfo | None:
    """The mount holding ``path`` (its nearest existing ancestor), or None where /proc/mounts is unreadable."""
    try:
        mounts = parse_mounts(mounts_file.read_text())
    except OSError:
        return None
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    real = os.path.realpath(probe)
    best: MountInfo | None = None
    for m in mounts:
        inside = real == m.mountpoint or real.startswith(m.mountpoint.rstrip("/") + "/")
        if inside and (best is None or len(m.mountpoint) > len(best.mountpoint)):
            best = m
    return best


def writable(path: Path) -> bool:
    """Whether the cache root (or the nearest existing ancestor) accepts writes, by permission and mount."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    info = mount_of(probe)
    if info is not None and info.read_only:
        return False
    return os.access(probe, os.W_OK)


# -- the bucket behind a mount ------------------------------------------------------------------------------------

_GCS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,221}[a-z0-9]$")
_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# rclone's on-the-fly remotes name their backend: ":gcs:bucket/path", ":s3{ab12C}:bucket/path" (braces: options)
_RCLONE_INLINE = re.compile(r"^:(?P<backend>gcs|s3)(\{[A-Za-z0-9_-]*\})?:(?P<bucket>[^/]+)(?P<path>(/[^/]+)*)/?$")


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo, the fields that say what is mounted where."""

    root: str  # the folder of the mounted filesystem that appears at mountpoint ("/" unless a bind of a subfolder)
    mountpoint: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    # the kernel writes space, tab, newline and backslash as octal escapes
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """The entries of a mountinfo file (proc(5): ``id parent major:minor root mountpoint options [optional...] -
    fstype source super-options``); malformed lines are skipped."""
    entries = []
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(rest) < 2:
            continue
        entries.append(MountEntry(_unescape(fields[3]), _unescape(fields[4]), rest[0], _unescape(rest[1])))
    return entries


@dataclass(frozen=True)
class MountBucket:
    """What the mount table says about the bucket behind a path: ``url`` (``gs://bucket/prefix``) when it is
    unambiguous, else None; ``why`` in words either way."""

    url: str | None
    why: str


def bucket_behind(path: Path, mountinfo: str) -> MountBucket:
    """The bucket URL of the folder ``path`` as the mount table shows it: the bucket and the folder in it.

    Unambiguous: a gcsfuse mount (fstype ``fuse.gcsfuse``, source = the bucket name) and an rclone mount of an
    on-the-fly remote that names its backend (``:gcs:bucket/path``, ``:s3:bucket/path``). Not: rclone's named
    remotes (``store:bucket``: only rclone's config says which store ``store`` is), s3fs and other FUSE mounts,
    gcsfuse mounting every bucket (source ``gcsfuse``), a path on no bucket mount. gcsfuse's ``--only-dir`` does not
    show in the mount table: with it, set GNOSIS_CACHE_BUCKET."""
    real = os.path.realpath(path)
    best: MountEntry | None = None
    for entry in parse_mountinfo(mountinfo):
        point = entry.mountpoint.rstrip("/") or "/"
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.mountpoint.rstrip("/") or "/")):
            best = entry
    if best is None or not best.fstype.startswith("fuse"):
        return MountBucket(None, f"{path} is not on a FUSE mount")
    below = PurePosixPath(os.path.relpath(real, best.mountpoint)).as_posix()
    inner = [p for p in (best.root.strip("/"), "" if below == "." else below) if p]
    if best.fstype == "fuse.gcsfuse":
        return _gcsfuse(best, inner)
    if best.fstype == "fuse.rclone":
        return _rclone(best, inner)
    return MountBucket(None, f"the {best.fstype} mount at {best.mountpoint} does not say which bucket it shows")


def _gcsfuse(entry: MountEntry, inner: list[str]) -> MountBucket:
    if not _GCS_BUCKET.match(entry.source) or entry.source == "gcsfuse":
        return MountBucket(None, f"the gcsfuse mount at {entry.mountpoint} names no single bucket ({entry.source!r})")
    return MountBucket(
        _url("gs", entry.source, inner), f"the gcsfuse mount of bucket {entry.source} at {entry.mountpoint}"
    )


def _rclone(entry: MountEntry, inner: list[str]) -> MountBucket:
    inline = _RCLONE_INLINE.match(entry.source)
    if inline is None:
        return MountBucket(
            None,
            f"the rclone mount at {entry.mountpoint} is of the remote {entry.source!r}, and only rclone's config says "
            "which store that is",
        )
    scheme, bucket = ("gs", _GCS_BUCKET) if inline["backend"] == "gcs" else ("s3", _S3_BUCKET)
    if not bucket.match(inline["bucket"]):
        return MountBucket(None, f"the rclone mount at {entry.mountpoint} has no bucket name in {entry.source!r}")
    parts = [p for p in (inline["path"].strip("/"), *inner) if p]
    return MountBucket(
        _url(scheme, inline["bucket"], parts), f"the rclone mount of {entry.source} at {entry.mountpoint}"
    )


def _url(scheme: str, bucket: str, parts: list[str]) -> str:
    return f"{scheme}://{bucket}" + "".join(f"/{p}" for p in "/".join(parts).split("/") if p)


def cache_bucket(
    setting: str | None, cache_root: Path, mountinfo_file: Path = Path("/proc/self/mountinfo")
) -> str | None:
    """The bucket URL behind the cache root for the download lease: GNOSIS_CACHE_BUCKET when it is set (a setting
    always wins), else what the mount table says where that is unambiguous (logged), else None (the file lease)."""
    if setting:
        return setting
    try:
        text = mountinfo_file.read_text()
    except OSError as exc:
        logger.debug("cache bucket: %s unreadable (%s); the download lease is a file", mountinfo_file, exc)
        return None
    found = bucket_behind(cache_root, text)
    if found.url is None:
        logger.debug("cache bucket: none from the mount table (%s); the download lease is a file", found.why)
        return None
    logger.info(
        "cache bucket: %s, from %s (GNOSIS_CACHE_BUCKET unset): the download lease is taken through the store",
        found.url,
        found.why,
    )
    return found.url
