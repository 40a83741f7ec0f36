"""``resolve`` hands out a snapshot only after hashing every small file, and a miss it cannot fill names the
cache's fault before the hub's."""

from __future__ import annotations

from pathlib import Path

import pytest

from gnosis_ocr.errors import CacheCorruptError, HubError, ModelNotCachedError, RepoNotFoundError
from gnosis_ocr.modelcache import ModelCache
from gnosis_ocr.modelcache.cache import CacheMode
from gnosis_ocr.modelcache.loader import ReadOptions, read_state_dict
from tests.conftest import REPO
from tests.support.hubserver import LocalHub


@pytest.fixture
def snapshot(cache: ModelCache) -> Path:
    return cache.warm(REPO).snapshot_dir


def _same_size_edit(path: Path, old: bytes, new: bytes) -> None:
    raw = path.read_bytes()
    assert len(old) == len(new) and old in raw
    path.write_bytes(raw.replace(old, new, 1))


EDITS = {
    "config.json": (b'"rope_theta": 1000000.0', b'"rope_theta": 9000000.0'),
    "tokenizer.json": (b'"type": "BPE"', b'"type": "BPF"'),
    "generation_config.json": (b'"do_sample": false', b'"do_sample": fals3'),
}


@pytest.mark.parametrize("mode", ["auto", "offline", "refresh"])
@pytest.mark.parametrize("name", sorted(EDITS))
def test_a_same_size_change_to_a_small_file_is_refused_by_resolve(
    snapshot: Path, cache: ModelCache, hub: LocalHub, mode: CacheMode, name: str
) -> None:
    _same_size_edit(snapshot / name, *EDITS[name])
    assert cache.status(REPO).complete  # names and sizes still match: only the hash tells
    with pytest.raises(CacheCorruptError) as info:
        cache.resolve(REPO, mode=mode)
    message = str(info.value)
    assert message.startswith(f"{name} does not match its sha256 in the ready-manifest")
    assert f"gnosis-ocr cache repair {REPO}" in message
    counted = cache.metrics.verifications.labels(check="load", result="corrupt")._value.get()
    assert counted == 1


def test_repair_fixes_what_resolve_refused(snapshot: Path, cache: ModelCache, hub: LocalHub) -> None:
    _same_size_edit(snapshot / "config.json", b'"rope_theta": 1000000.0', b'"rope_theta": 9000000.0')
    with pytest.raises(CacheCorruptError, match=r"config\.json"):
        cache.resolve(REPO, mode="offline")
    assert cache.repair(REPO).downloaded_files == 1
    assert cache.resolve(REPO, mode="offline").hit


def test_weights_stay_hashed_by_the_loader_as_set(snapshot: Path, cache: ModelCache, hub: LocalHub) -> None:
    shard = snapshot / "model-00002-of-00002.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0xFF  # the last byte of the tensor data: the header still parses
    shard.write_bytes(bytes(raw))
    resolved = cache.resolve(REPO, mode="offline")  # resolve hashes the small files only
    with pytest.raises(CacheCorruptError, match=r"model-00002-of-00002\.safetensors does not match its sha256"):
        read_state_dict(resolved, ReadOptions(verify=True))
    state, _ = read_state_dict(resolved, ReadOptions(verify=False))  # GNOSIS_CACHE_VERIFY_ON_LOAD=false
    assert state


@pytest.mark.parametrize("mode", ["auto", "refresh"])
def test_a_missing_file_with_the_hub_down_names_the_file_first(
    snapshot: Path, cache: ModelCache, hub: LocalHub, mode: CacheMode
) -> None:
    (snapshot / "tokenizer.json").unlink()
    hub.stop()
    with pytest.raises(ModelNotCachedError) as info:
        cache.resolve(REPO, mode=mode)
    error = info.value
    assert isinstance(error.__cause__, HubError)
    assert error.message.startswith(f"Model '{REPO}' (rev main (")
    assert (
        f"is incomplete in {cache.root}: tokenizer.json is missing; fetching it from the hub failed: "
        "Could not reach the model hub"
    ) in error.message
    assert error.hint is not None and f"gnosis-ocr cache repair {REPO}` where the hub is reachable" in error.hint
    assert "needs no network" not in str(error)


def test_an_absent_model_with_the_hub_down_says_so_first(cache_root: Path, hub: LocalHub) -> None:
    cache = ModelCache(cache_root, endpoint=hub.endpoint)
    hub.stop()
    with pytest.raises(ModelNotCachedError) as info:
        cache.resolve(REPO, mode="auto")
    assert info.value.message.startswith(f"Model '{REPO}' (rev main) is not in the cache in {cache_root}; ")
    assert "downloading it from the hub failed: Could not reach the model hub" in info.value.message
    assert info.value.hint is not None and f"gnosis-ocr cache warm {REPO}" in info.value.hint


def test_an_unknown_model_stays_the_hubs_answer(cache: ModelCache, hub: LocalHub) -> None:
    with pytest.raises(RepoNotFoundError, match="has no model"):
        cache.resolve("gnosis-test/nope", mode="auto")
