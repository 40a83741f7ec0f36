"""The parallel sequential reader gives the same tensors as safetensors, and refuses corrupt bytes."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gnosis_ocr.errors import CacheCorruptError
from gnosis_ocr.modelcache.weights import read_files, tensors_from_buffer


@pytest.fixture
def shards(tmp_path: Path) -> list[Path]:
    gen = torch.Generator().manual_seed(0)
    a = {
        "w": torch.randn(64, 33, generator=gen),
        "b16": torch.randn(7, 5, generator=gen).to(torch.bfloat16),
        "i": torch.arange(11, dtype=torch.int64),
        "empty": torch.zeros(0, 3),
    }
    b = {"h": torch.randn(3, 3, generator=gen).to(torch.float16), "flag": torch.tensor([True, False])}
    paths = [tmp_path / "model-00001-of-00002.safetensors", tmp_path / "model-00002-of-00002.safetensors"]
    save_file(a, paths[0])
    save_file(b, paths[1])
    return paths


def test_same_tensors_as_safetensors(shards: list[Path]) -> None:
    buffers, stats = read_files(shards, workers=2, chunk_bytes=1000)
    assert stats.files == 2 and stats.bytes == sum(p.stat().st_size for p in shards)
    for path in shards:
        ours, theirs = tensors_from_buffer(buffers[path]), load_file(path)
        assert ours.keys() == theirs.keys()
        for name, tensor in theirs.items():
            assert ours[name].dtype == tensor.dtype
            assert torch.equal(ours[name], tensor), name


def test_hash_checked_while_reading(shards: list[Path]) -> None:
    hashes = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in shards}
    read_files(shards, expected_sha256=hashes)
    data = bytearray(shards[0].read_bytes())
    data[-3] ^= 0xFF  # one flipped bit pattern deep in the tensor data
    shards[0].write_bytes(data)
    with pytest.raises(CacheCorruptError, match="does not match its sha256"):
        read_files(shards, expected_sha256=hashes)


@pytest.mark.parametrize("damage", ["zero", "short", "header"])
def test_broken_files_are_refused_by_the_parser(shards: list[Path], damage: str) -> None:
    data = bytearray(shards[0].read_bytes())
    if damage == "zero":
        data = bytearray(len(data))
    elif damage == "short":
        data = data[: len(data) // 2]
    else:
        data[8:20] = b"not json!!!!"
    with pytest.raises(CacheCorruptError, match=r"not a safetensors file|out of bounds"):
        tensors_from_buffer(data)


def test_segments_cover_every_byte_once_in_chunk_aligned_pieces(tmp_path: Path) -> None:
    from gnosis_ocr.modelcache.weights import segments_for

    sizes = {tmp_path / "a": 10_000_001, tmp_path / "b": 2_500_000, tmp_path / "c": 0, tmp_path / "d": 999}
    segs = segments_for(sizes, workers=4, chunk_bytes=100_000)
    for path, size in sizes.items():
        mine = sorted((s.start, s.end) for s in segs if s.path == path)
        assert mine[0][0] == 0 and mine[-1][1] == size
        assert all(a[1] == b[0] for a, b in itertools.pairwise(mine))  # contiguous, no overlap
        assert all(start % 100_000 == 0 for start, _ in mine)
    assert len([s for s in segs if s.path == tmp_path / "a"]) > 1  # the big file is read by several streams
    assert segs[0].path == tmp_path / "a" and segs[0].start == 0  # fronts first, largest file first


def test_many_small_segments_give_the_same_bytes_and_hash(shards: list[Path]) -> None:
    hashes = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in shards}
    sizes = {p: p.stat().st_size for p in shards}
    buffers, stats = read_files(shards, workers=3, chunk_bytes=64, expected_sha256=hashes, expected_sizes=sizes)
    assert {p: bytes(b) for p, b in buffers.items()} == {p: p.read_bytes() for p in shards}
    assert stats.bytes == sum(sizes.values())


def test_a_size_other_than_the_manifests_is_refused_before_reading(shards: list[Path]) -> None:
    sizes = {p: p.stat().st_size for p in shards}
    sizes[shards[1]] += 1
    with pytest.raises(CacheCorruptError, match=rf"{shards[1].name} is [\d,]+ bytes but the ready-manifest says"):
        read_files(shards, expected_sizes=sizes)


def test_a_failing_read_stops_the_hashers_and_raises(shards: list[Path], tmp_path: Path) -> None:
    """A reader that fails (here: the path is a folder) wakes the hasher waiting on its chunks: no hang."""
    import threading

    folder = tmp_path / "not-a-file.safetensors"
    folder.mkdir()
    hashes = {shards[0]: hashlib.sha256(shards[0].read_bytes()).hexdigest(), folder: "0" * 64}
    raised: list[BaseException] = []

    def run() -> None:
        try:
            read_files([shards[0], folder], workers=2, chunk_bytes=64, expected_sha256=hashes)
        except BaseException as exc:
            raised.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "read_files hung after a reader failed"
    assert raised and isinstance(raised[0], IsADirectoryError)
