"""The metrics a dashboard reads, rendered in Prometheus text format after real cache work."""

from __future__ import annotations

import socket

from prometheus_client import generate_latest

from gnosis_ocr.modelcache import ModelCache
from tests.conftest import REPO
from tests.support.hubserver import LocalHub


def _value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported:\n{text}")


def test_hit_miss_bytes_phases_and_network_attempts(cache: ModelCache, hub: LocalHub) -> None:
    cache.resolve(REPO, mode="auto")  # miss: warms
    cache.resolve(REPO, mode="auto")  # hit
    cache.status(REPO, full=True)
    text = generate_latest(cache.metrics.registry).decode()
    assert _value(text, 'gnosis_cache_lookups_total{result="miss"}') == 1
    assert _value(text, 'gnosis_cache_lookups_total{result="hit"}') == 1
    assert _value(text, "gnosis_cache_downloaded_bytes_total") == cache.status(REPO).expected_size
    assert _value(text, 'gnosis_cache_phase_seconds_count{phase="download"}') == 1
    assert _value(text, 'gnosis_cache_phase_seconds_count{phase="verify"}') == 1
    assert _value(text, 'gnosis_cache_verifications_total{check="full",result="ok"}') == 1
    assert "gnosis_cache_snapshot_bytes" in text

    before = cache.metrics.network_attempts()
    with socket.create_connection(("127.0.0.1", hub.port), timeout=2):
        pass
    text = generate_latest(cache.metrics.registry).decode()
    assert cache.metrics.network_attempts() == before + 2
    assert 'gnosis_cache_network_attempts_total{blocked="false",host="127.0.0.1"}' in text


def test_a_refresh_lookup_counts_once(cache: ModelCache, hub: LocalHub) -> None:
    commit = cache.resolve(REPO, mode="auto").commit  # miss: warms
    cache.resolve(REPO, mode="refresh")  # the hub says the same commit: one hit
    cache.resolve(REPO, commit, mode="refresh")  # pinned and complete: one hit, no hub
    text = generate_latest(cache.metrics.registry).decode()
    assert _value(text, 'gnosis_cache_lookups_total{result="miss"}') == 1
    assert _value(text, 'gnosis_cache_lookups_total{result="hit"}') == 2
