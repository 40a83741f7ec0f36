"""Fixtures that build real things: a tiny Qwen2.5-VL checkpoint, a hub-compatible HTTP server serving it,
and a cache root in tmp. Nothing here reaches beyond loopback."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before anything imports huggingface_hub: no telemetry, no user cache, no token from the machine.
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("HF_TOKEN", None)
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.pop("TRANSFORMERS_OFFLINE", None)
for _var in ("MODEL_CACHE_PATH", "MODEL_NAME", "HF_ENDPOINT", "HF_HOME"):
    os.environ.pop(_var, None)
# The fake engine is a test's, brought through the production plugin seam: `engine="fake"`, GNOSIS_ENGINE=fake and
# `--engine fake` work here and in every subprocess that inherits this environment (this checkout on its path).
_ROOT = str(Path(__file__).resolve().parents[1])
os.environ["GNOSIS_ENGINE_PLUGINS"] = "fake=tests.support.fakeengine:fake_engine"
os.environ["PYTHONPATH"] = os.pathsep.join([_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])

from gnosis_ocr.modelcache import CacheMetrics, ModelCache, WarmOptions  # noqa: E402
from tests.support.hubserver import LocalHub  # noqa: E402
from tests.support.objectstores import FakeGcs, MotoS3  # noqa: E402
from tests.support.tinymodel import tiny_model_dir  # noqa: E402

REPO = "gnosis-test/tiny-qwen2.5-vl"


@pytest.fixture(scope="session", autouse=True)
def _isolated_hf_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    home = tmp_path_factory.mktemp("hf_home")
    os.environ["HF_HOME"] = str(home)
    yield


@pytest.fixture(autouse=True)
def _back_online() -> Iterator[None]:
    """``resolve`` puts the process offline for the hub (as it should in production); undo it per test."""
    yield
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.pop(var, None)
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = False  # type: ignore[attr-defined]
    from gnosis_ocr.modelcache.guard import NetworkGuard

    NetworkGuard.install().strict = False


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2.5-VL checkpoint (2 safetensors shards, tokenizer, image processor)."""
    return tiny_model_dir(tmp_path_factory.getbasetemp() / "tinymodel")


@pytest.fixture
def hub(tiny_model: Path) -> Iterator[LocalHub]:
    """A hub-compatible server on 127.0.0.1 serving the tiny model as ``REPO`` (branch main)."""
    server = LocalHub()
    server.add_repo(REPO, tiny_model)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cache_root(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "huggingface"


@pytest.fixture
def cache(cache_root: Path, hub: LocalHub) -> ModelCache:
    return ModelCache(
        cache_root,
        endpoint=hub.endpoint,
        metrics=CacheMetrics(),
        warm_options=WarmOptions(workers=2, lease_ttl=5, lease_wait=30),
    )


def model_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="session")
def gcs() -> Iterator[FakeGcs]:
    """fake-gcs-server on loopback (gs://), started on first use; tests make their own buckets."""
    with FakeGcs() as server:
        yield server


@pytest.fixture(scope="session")
def s3() -> Iterator[MotoS3]:
    """moto's S3 server on loopback (s3://), started on first use; tests make their own buckets."""
    with MotoS3() as server:
        yield server
