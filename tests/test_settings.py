"""Settings honour the seed deployment's variables and fall back sensibly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from gnosis_ocr.settings import Settings, default_cache_root


def test_seed_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODEL_CACHE_PATH", str(tmp_path / "a"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "b"))
    monkeypatch.setenv("MODEL_NAME", "org/model")
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.example:8080/")
    monkeypatch.setenv("GNOSIS_CACHE_MODE", "offline")
    s = Settings()
    assert s.cache_root == tmp_path / "a"
    assert s.model_name == "org/model"
    assert s.hf_endpoint == "http://mirror.example:8080"
    assert s.strict_offline


def test_hf_home_when_no_model_cache_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MODEL_CACHE_PATH", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "b"))
    assert Settings().cache_root == tmp_path / "b"


def test_default_prefers_the_mount_even_read_only(tmp_path: Path) -> None:
    mounted = tmp_path / "cache" / "huggingface"
    mounted.mkdir(parents=True)
    assert default_cache_root(mounted) == mounted
    (tmp_path / "cache").chmod(0o555)
    try:
        assert default_cache_root(mounted) == mounted
    finally:
        (tmp_path / "cache").chmod(0o755)


def test_default_falls_back_to_the_user_cache_without_a_mount(tmp_path: Path) -> None:
    root = default_cache_root(tmp_path / "nothing" / "huggingface")
    assert root.name == "huggingface" and "gnosis-ocr" in str(root)


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GNOSIS_CACHE_MODE", "sometimes")
    with pytest.raises(ValidationError, match="cache_mode"):
        Settings()


def test_token_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secretsecret")
    s = Settings()
    assert "hf_secretsecret" not in repr(s) and "hf_secretsecret" not in str(s.model_dump())
    assert s.token() == "hf_secretsecret"


def test_importing_the_package_imports_no_heavy_module() -> None:
    code = (
        "import sys, gnosis_ocr, gnosis_ocr.modelcache, gnosis_ocr.cli.main; "
        "print(sorted(m for m in ('torch', 'transformers', 'huggingface_hub', 'gcsfs', 's3fs') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
