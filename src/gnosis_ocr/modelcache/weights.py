"""Read weight files in large sequential chunks, several streams at once, hashing on the way.

A bucket mount (gcsfuse, rclone) serves each random page fault of an mmap as a ranged object read: loading
safetensors by mmap from FUSE is an order of magnitude slower than from disk. Here every file is read into one
preallocated buffer (tensors are then views into it: no second copy). Files are cut into a few large segments
(``segments_for``), each read front to back in ``chunk_bytes`` reads by one of ``workers`` threads, so a 5 GB
shard is fetched by several sequential streams at once rather than one (what a bucket mount needs to deliver its
bandwidth; on a local disk a few large streams cost nothing).

Verification: sha256 is one sequential stream per file, so each file gets its own hashing thread that follows the
readers through the buffer in order, waiting for the next chunk to land (hashlib releases the GIL: shards hash in
parallel on as many cores as there are shards). Every file's size is checked against the ready-manifest before it
is read (``expected_sizes``); with ``expected_sha256`` its hash too, so flipped bytes are refused instead of loaded.
The largest shard bounds the hashing time: 5 GB at ~300 MiB/s per core is ~16 s, hidden behind a read slower than
that (a bucket mount) and visible behind a faster one (a local NVMe disk).
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gnosis_ocr.errors import CacheCorruptError

if TYPE_CHECKING:
    import torch

REPAIR_HINT = (
    "Run `gnosis-ocr cache verify --full` to list every bad file and `gnosis-ocr cache repair` to fetch them again."
)
MIN_SEGMENT_CHUNKS = 8  # a segment is at least this many chunks: fewer, longer streams beat many short ones


@dataclass(frozen=True)
class ReadStats:
    files: int
    bytes: int
    seconds: float

    @property
    def mib_per_s(self) -> float:
        return self.bytes / (1024 * 1024) / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class Segment:
    path: Path
    start: int
    end: int


def segments_for(sizes: dict[Path, int], *, workers: int, chunk_bytes: int) -> list[Segment]:
    """The files cut into chunk-aligned segments, about two per worker over all files (so the pool stays busy
    while the last ones finish) and at least ``MIN_SEGMENT_CHUNKS`` chunks long; ordered by offset, largest file
    first, so every file's front arrives early and its hasher can start."""
    total = sum(sizes.values())
    target = max(chunk_bytes * MIN_SEGMENT_CHUNKS, -(-total // max(1, 2 * workers)))
    target = -(-target // chunk_bytes) * chunk_bytes
    per_file = {
        p: [Segment(p, s, min(s + target, n)) for s in range(0, n, target)] or [Segment(p, 0, 0)]
        for p, n in sizes.items()
    }
    order = sorted(per_file, key=lambda p: sizes[p], reverse=True)
    rounds = max(len(v) for v in per_file.values()) if per_file else 0
    return [per_file[p][i] for i in range(rounds) for p in order if i < len(per_file[p])]


class _FileBuffer:
    """One file's buffer, which chunks have landed in it, and its in-order sha256 follower."""

    def __init__(self, path: Path, size: int, chunk_bytes: int, expected_sha256: str | None) -> None:
        self.path, self.size, self.chunk = path, size, chunk_bytes
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.expected = expected_sha256
        self._landed = [False] * (-(-size // chunk_bytes))
        self._cond = threading.Condition()
        self._failed = False
        self.digest: str | None = None

    def landed(self, start: int) -> None:
        with self._cond:
            self._landed[start // self.chunk] = True
            self._cond.notify_all()

    def fail(self) -> None:
        with self._cond:
            self._failed = True
            self._cond.notify_all()

    def hash_in_order(self) -> None:
        """sha256 of the buffer, chunk by chunk as the readers fill it; stops early when a reader failed."""
        h = hashlib.sha256()
        for i in range(len(self._landed)):
            with self._cond:
                while not self._landed[i] and not self._failed:
                    self._cond.wait()
                if self._failed:
                    return
            h.update(self.view[i * self.chunk : (i + 1) * self.chunk])
        self.digest = h.hexdigest()

    def check(self) -> None:
        if self.expected is not None and self.digest != self.expected:
            raise CacheCorruptError(
                f"{self.path.name} does not match its sha256 in the ready-manifest: the cached file is corrupt, "
                "so it was not loaded.",
                hint=REPAIR_HINT,
            )


def _check_size(path: Path, size: int, expected: int | None) -> None:
    if expected is not None and size != expected:
        raise CacheCorruptError(
            f"{path.name} is {size:,} bytes but the ready-manifest says {expected:,}: the cached file is "
            f"{'truncated' if size < expected else 'not the one the manifest lists'}, so it was not loaded.",
            hint=REPAIR_HINT,
        )


def _read_segment(fb: _FileBuffer, seg: Segment, on_bytes: Callable[[int], None] | None) -> None:
    try:
        with seg.path.open("rb", buffering=0) as fh:
            fh.seek(seg.start)
            pos = seg.start
            while pos < seg.end:
                want = min(fb.chunk, seg.end - pos)
                got = 0
                while got < want:  # a FUSE read may return less than asked; a chunk lands whole
                    n = fh.readinto(fb.view[pos + got : pos + want])
                    if not n:
                        raise CacheCorruptError(
                            f"{seg.path} shrank while being read (ended at byte {pos + got:,} of {fb.size:,}).",
                            hint=REPAIR_HINT,
                        )
                    got += n
                fb.landed(pos)
                pos += want
                if on_bytes is not None:
                    on_bytes(want)
    except BaseException:
        fb.fail()
        raise


def read_files(
    paths: Sequence[Path],
    *,
    workers: int = 4,
    chunk_bytes: int = 16 * 1024 * 1024,
    expected_sha256: dict[Path, str] | None = None,
    expected_sizes: dict[Path, int] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> tuple[dict[Path, bytearray], ReadStats]:
    """Every file in memory, read by ``workers`` threads in large sequential segments. CacheCorruptError when a
    size differs from ``expected_sizes`` (checked before any byte is read), a file shrinks while being read, or a
    sha256 differs from ``expected_sha256`` (files not named there are not hashed)."""
    started = time.monotonic()
    hashes = expected_sha256 or {}
    sizes = {p: p.stat().st_size for p in paths}
    for path, size in sizes.items():
        _check_size(path, size, (expected_sizes or {}).get(path))
    files = {p: _FileBuffer(p, n, chunk_bytes, hashes.get(p)) for p, n in sizes.items()}
    segments = segments_for(sizes, workers=workers, chunk_bytes=chunk_bytes)
    hashed = [fb for fb in files.values() if fb.expected is not None]
    with (
        ThreadPoolExecutor(max_workers=max(1, len(hashed)), thread_name_prefix="sha256") as hashers,
        ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="weights") as readers,
    ):
        hashing = [hashers.submit(fb.hash_in_order) for fb in hashed]
        reads = [readers.submit(_read_segment, files[s.path], s, on_bytes) for s in segments]
        try:
            for future in reads:
                future.result()
        except BaseException:
            for fb in files.values():
                fb.fail()
            for future in reads:
                future.cancel()
            raise
        for future in hashing:
            future.result()
    for fb in hashed:
        fb.check()
    total = sum(sizes.values())
    return {p: fb.buf for p, fb in files.items()}, ReadStats(len(files), total, time.monotonic() - started)


_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}


def parse_safetensors_header(buf: bytes | bytearray | memoryview) -> tuple[int, dict[str, Any]]:
    """(data offset, header) of a safetensors buffer; CacheCorruptError when it is not one."""
    if len(buf) < 8:
        raise CacheCorruptError("not a safetensors file: shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", bytes(buf[:8]))
    if n == 0 or 8 + n > len(buf):
        raise CacheCorruptError(f"not a safetensors file: header length {n} does not fit in {len(buf)} bytes")
    try:
        header: dict[str, Any] = json.loads(bytes(buf[8 : 8 + n]))
    except ValueError as exc:
        raise CacheCorruptError(f"not a safetensors file: header is not JSON ({exc})") from exc
    data_len = len(buf) - 8 - n
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        start, end = spec["data_offsets"]
        if not 0 <= start <= end <= data_len or spec.get("dtype") not in _DTYPES:
            raise CacheCorruptError(f"safetensors entry {name!r} is out of bounds or of unknown dtype")
    return 8 + n, header


def tensors_from_buffer(buf: bytearray) -> dict[str, torch.Tensor]:
    """Tensors that view ``buf`` (kept alive by them); no copy."""
    import torch

    offset, header = parse_safetensors_header(buf)
    whole = torch.frombuffer(buf, dtype=torch.uint8) if len(buf) else torch.empty(0, dtype=torch.uint8)
    out: dict[str, torch.Tensor] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        start, end = spec["data_offsets"]
        dtype = getattr(torch, _DTYPES[spec["dtype"]])
        if end == start:
            out[name] = torch.empty(spec["shape"], dtype=dtype)
            continue
        raw = whole[offset + start : offset + end]
        try:
            out[name] = raw.view(dtype).reshape(spec["shape"])
        except RuntimeError:  # misaligned for this dtype: copy this one tensor
            out[name] = raw.clone().view(dtype).reshape(spec["shape"])
    return out
