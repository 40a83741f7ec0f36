"""Read weight files in large sequential chunks, several files at once, hashing on the way.

A bucket mount (gcsfuse, rclone) serves each random page fault of an mmap as a ranged object read: loading
safetensors by mmap from FUSE is an order of magnitude slower than from disk. Here each file is read front to
back in ``chunk_bytes`` reads straight into one preallocated buffer, ``workers`` files in parallel; tensors are
then views into those buffers (no second copy). With ``verify`` each file's sha256 is computed as it streams
and checked against the ready-manifest, so flipped bytes are refused instead of loaded.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gnosis_ocr.errors import CacheCorruptError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ReadStats:
    files: int
    bytes: int
    seconds: float

    @property
    def mib_per_s(self) -> float:
        return self.bytes / (1024 * 1024) / self.seconds if self.seconds > 0 else float("inf")


def read_file_into(
    path: Path,
    *,
    chunk_bytes: int,
    expected_sha256: str | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> bytearray:
    """The whole file in one buffer, read sequentially; CacheCorruptError on a hash or size mismatch."""
    size = path.stat().st_size
    buf = bytearray(size)
    view = memoryview(buf)
    digest = hashlib.sha256() if expected_sha256 is not None else None
    # One hashing thread per file, fed in order, so the next read overlaps the hash of the last chunk
    # (hashlib releases the GIL on large buffers).
    hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256") if digest is not None else None
    pos = 0
    try:
        with path.open("rb", buffering=0) as fh:
            while pos < size:
                n = fh.readinto(view[pos : pos + chunk_bytes])
                if not n:
                    break
                if hasher is not None and digest is not None:
                    hasher.submit(digest.update, view[pos : pos + n])
                pos += n
                if on_bytes is not None:
                    on_bytes(n)
    finally:
        if hasher is not None:
            hasher.shutdown(wait=True)
    if pos != size:
        raise CacheCorruptError(f"{path} shrank while being read ({pos} of {size} bytes).")
    if digest is not None and digest.hexdigest() != expected_sha256:
        raise CacheCorruptError(
            f"{path.name} does not match its sha256 in the ready-manifest: the cached file is corrupt, "
            "so it was not loaded.",
            hint="Run `gnosis-ocr cache verify --full` to list every bad file and `gnosis-ocr cache repair` "
            "to fetch them again.",
        )
    return buf


def read_files(
    paths: Sequence[Path],
    *,
    workers: int = 4,
    chunk_bytes: int = 16 * 1024 * 1024,
    expected_sha256: dict[Path, str] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> tuple[dict[Path, bytearray], ReadStats]:
    """Several files read in parallel, each sequentially, into memory."""
    started = time.monotonic()
    hashes = expected_sha256 or {}

    def one(path: Path) -> tuple[Path, bytearray]:
        return path, read_file_into(path, chunk_bytes=chunk_bytes, expected_sha256=hashes.get(path), on_bytes=on_bytes)

    # largest first, so the longest read starts earliest
    ordered = sorted(paths, key=lambda p: p.stat().st_size, reverse=True)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="weights") as pool:
        buffers = dict(pool.map(one, ordered))
    total = sum(len(b) for b in buffers.values())
    return buffers, ReadStats(len(buffers), total, time.monotonic() - started)


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
