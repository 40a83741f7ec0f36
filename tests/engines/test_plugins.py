"""Engines from elsewhere (GNOSIS_ENGINE_PLUGINS): how an operator brings one, how a bad entry is refused, and
that the production package ships neither a test engine nor a test switch (the fake comes in through this seam)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from gnosis_ocr.errors import ConfigError, EngineUnavailableError
from gnosis_ocr.modelcache import ModelCache
from gnosis_ocr.settings import Settings
from tests.conftest import REPO
from tests.support.fakeengine import PLUGIN
from tests.support.hubserver import LocalHub

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "gnosis_ocr"


def _settings(**values: object) -> Settings:
    return Settings(**{"engine_plugins": "", **values})  # type: ignore[arg-type]


def not_an_engine(settings: Settings) -> object:
    return object()


def test_a_plugin_engine_is_built_by_its_factory_from_the_settings(cache_root: Path) -> None:
    from gnosis_ocr.engines import engine_from_settings

    settings = _settings(engine="fake", engine_plugins=PLUGIN, vlm_batch_size=3)
    engine = engine_from_settings(settings, ModelCache(cache_root, endpoint="http://127.0.0.1:9"))
    try:
        assert engine.info.name == "fake"
        assert engine.capacity == 2 * 3  # the factory read its batch size from the settings it was given
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("fake", "not name=package.module:factory"),
        ("fake=tests.support.fakeengine", "not name=package.module:factory"),
        ("Fake=a.b:c", "not name=package.module:factory"),
        ("fake=a.b:c; rm -rf /", "not name=package.module:factory"),
        ("tesseract=a.b:c", "that gnosis-ocr already has"),
        ("x=a:b,x=a:c", "twice"),
    ],
)
def test_a_bad_plugin_entry_is_refused_naming_it(value: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _settings(engine_plugins=value)


def test_an_engine_name_that_is_neither_built_in_nor_a_plugin_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"GNOSIS_ENGINE='fake' is not an engine: use one of auto, vlm"):
        _settings(engine="fake")


def test_an_unknown_engine_asked_for_by_name_is_bad_usage(cache_root: Path) -> None:
    from gnosis_ocr.engines import engine_from_settings

    with pytest.raises(ConfigError, match="Unknown engine 'nope'") as info:
        engine_from_settings(_settings(engine_plugins=PLUGIN), ModelCache(cache_root, endpoint="x"), "nope")
    assert info.value.hint is not None and "tesseract" in info.value.hint and "fake" in info.value.hint


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("no_such_package.engines:make", "Cannot import the engine plugin x=no_such_package.engines:make"),
        ("tests.support.fakeengine:no_such_factory", "has no 'no_such_factory'"),
        ("tests.engines.test_plugins:not_an_engine", "returned a object, which is not an engine"),
    ],
)
def test_a_plugin_that_cannot_give_an_engine_makes_the_engine_unavailable(
    cache_root: Path, spec: str, error: str
) -> None:
    from gnosis_ocr.engines import engine_from_settings

    settings = _settings(engine="x", engine_plugins=f"x={spec}")
    with pytest.raises(EngineUnavailableError, match=error):
        engine_from_settings(settings, ModelCache(cache_root, endpoint="http://127.0.0.1:9"))


def test_the_cli_takes_a_plugin_engine_and_refuses_an_unknown_one(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200", "MODEL_CACHE_PATH": str(tmp_path / "cache")}
    page = tmp_path / "page.png"
    from PIL import Image

    Image.new("RGB", (200, 100), "white").save(page)
    argv = [sys.executable, "-m", "gnosis_ocr", "ocr", str(page)]
    ok = subprocess.run([*argv, "-e", "fake"], env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "fake text of a" in ok.stdout
    unknown = subprocess.run([*argv, "-e", "nope"], env=env, capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2
    assert "Unknown engine 'nope'" in unknown.stderr and "GNOSIS_ENGINE_PLUGINS" in unknown.stderr


def test_the_production_package_ships_no_test_engine_and_no_test_switch() -> None:
    assert importlib.util.find_spec("gnosis_ocr.engines.fake") is None
    sources = {p: p.read_text() for p in SRC.rglob("*.py")}
    for needle in ("GNOSIS_TEST_", "fake_engine", "CRASH_MARKER", "FakeEngine"):
        assert [str(p.relative_to(SRC)) for p, text in sources.items() if needle in text] == [], needle


@pytest.fixture
def a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch says a CUDA device is there (the lowest seam of gpu_available); nothing here runs on it."""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.mark.usefixtures("a_gpu")
def test_auto_takes_the_vlm_only_when_its_model_is_complete_in_the_cache(
    cache: ModelCache, hub: LocalHub, tmp_path: Path
) -> None:
    from gnosis_ocr.engines import choose_engine

    # no layout model where this one points: the CPU engine auto falls back to is tesseract (tests/engines/test_layout
    # has the layout side)
    settings = _settings(model_name=REPO, model_cache_path=cache.root, layout_model=tmp_path / "absent.onnx")
    hub.reset_counters()
    name, reason = choose_engine(settings, cache)
    assert name == "tesseract"
    assert "is absent in the cache, and auto does not download it" in reason
    assert "so tesseract, as the layout engine is not installed" in reason and "absent.onnx" in reason
    assert f"gnosis-ocr cache warm {REPO}" in reason
    assert hub.request_count == 0  # choosing asked the hub nothing

    cache.warm(REPO)
    name, reason = choose_engine(settings, cache)
    assert name == "vlm" and "complete cached" in reason
