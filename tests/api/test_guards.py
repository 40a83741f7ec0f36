"""The guards' decisions as pure functions (the real server is exercised in tests/e2e/test_cross_site.py and
tests/e2e/test_slow_clients.py), and the settings that feed them."""

from __future__ import annotations

import pytest

from gnosis_ocr.api.auth import key_digests
from gnosis_ocr.api.guards import cross_site_reason, host_allowed, split_host
from gnosis_ocr.errors import ConfigError
from gnosis_ocr.settings import Settings


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Example.org", ("example.org", None)),
        ("example.org:8080", ("example.org", "8080")),
        ("[::1]:7799", ("::1", "7799")),
        ("[::1]", ("::1", None)),
        ("::1", ("::1", None)),
    ],
)
def test_split_host(value: str, expected: tuple[str, str | None]) -> None:
    assert split_host(value) == expected


def test_host_allowed() -> None:
    allowed = ("127.0.0.1", "ocr.example.org:443", "*.run.app")
    assert host_allowed("127.0.0.1:7799", allowed)
    assert host_allowed("OCR.example.org:443", allowed)
    assert not host_allowed("ocr.example.org:8443", allowed)
    assert host_allowed("svc-abc.a.run.app", allowed)
    assert not host_allowed("run.app.evil.example", allowed)
    assert not host_allowed("evilrun.app", allowed)
    assert not host_allowed(None, allowed)


HOST = "127.0.0.1:7799"


@pytest.mark.parametrize(
    ("method", "origin", "site", "refused"),
    [
        ("GET", "https://evil.example", "cross-site", False),  # reads are never refused
        ("POST", None, None, False),  # not a browser
        ("POST", None, "same-origin", False),
        ("POST", "http://127.0.0.1:7799", "same-origin", False),
        ("POST", "https://evil.example", "same-origin", False),  # the browser's word decides
        ("POST", None, "none", False),
        ("POST", "https://evil.example", "cross-site", True),
        ("DELETE", "http://localhost:7799", "same-site", True),
        ("PUT", None, "cross-site", True),
        ("POST", "http://127.0.0.1:7799", None, False),  # no Sec-Fetch-Site: the Origin against the Host
        ("PATCH", "http://127.0.0.1:8000", None, True),
        ("POST", "null", None, True),
        ("POST", "https://tools.example.org/", "cross-site", False),  # allowed
    ],
)
def test_cross_site_reason(method: str, origin: str | None, site: str | None, refused: bool) -> None:
    reason = cross_site_reason(method, origin, site, HOST, ("https://tools.example.org",))
    assert (reason is not None) == refused, reason


def test_allowed_lists_come_from_comma_separated_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GNOSIS_ALLOWED_ORIGINS", " https://A.example/ ,, http://b.example:8080")
    monkeypatch.setenv("GNOSIS_ALLOWED_HOSTS", "localhost,127.0.0.1")
    settings = Settings()
    assert settings.allowed_origins == ("https://a.example", "http://b.example:8080")
    assert settings.allowed_hosts == ("localhost", "127.0.0.1")
    assert Settings(allowed_hosts=["X.example"]).allowed_hosts == ("x.example",)


@pytest.mark.parametrize("value", [",", " , ", ",,"])
def test_a_key_setting_with_no_key_is_a_config_error(value: str) -> None:
    with pytest.raises(ConfigError, match="GNOSIS_API_KEY is set but holds no key"):
        key_digests(value)


def test_an_empty_key_setting_is_no_key() -> None:
    assert key_digests(None) == ()
    assert key_digests("") == ()
    assert Settings(api_key="").api_key is None
    assert len(key_digests(" a , b ,")) == 2
