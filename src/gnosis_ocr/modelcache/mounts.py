"""Which filesystem holds the cache: a bucket mount (gcsfuse, rclone, s3fs), read-only or not."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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
