"""The parallel sequential reader gives the same tensors as safetensors, and refuses corrupt bytes."""

from __future__ import annotations

import hashlib
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
