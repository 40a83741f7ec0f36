"""Prometheus metrics of the model cache. One ``CacheMetrics`` per registry; the service exposes it."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from gnosis_ocr.modelcache.guard import NetworkGuard

PHASE_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.lookups = Counter(
            "gnosis_cache_lookups",
            "Model resolutions by outcome (hit: complete on disk).",
            ["result"],
            registry=r,
        )
        self.bytes_downloaded = Counter(
            "gnosis_cache_downloaded_bytes", "Bytes downloaded from the model hub into the cache.", registry=r
        )
        self.files_downloaded = Counter(
            "gnosis_cache_downloaded_files", "Files downloaded from the model hub into the cache.", registry=r
        )
        self.phase_seconds = Histogram(
            "gnosis_cache_phase_seconds",
            "Seconds spent per phase: check (start-up), download, verify (sha256), read (weights), load.",
            ["phase"],
            buckets=PHASE_BUCKETS,
            registry=r,
        )
        self.bytes_read = Counter("gnosis_cache_read_bytes", "Weight bytes read from the cache.", registry=r)
        self.verifications = Counter(
            "gnosis_cache_verifications",
            "Snapshot checks by kind and result.",
            ["check", "result"],
            registry=r,
        )
        self.lease_waits = Counter(
            "gnosis_cache_lease_waits", "Times a starter waited for another writer's lease.", registry=r
        )
        self.lease_wait_seconds = Counter(
            "gnosis_cache_lease_wait_seconds", "Seconds spent waiting for another writer.", registry=r
        )
        self.snapshot_bytes = Gauge(
            "gnosis_cache_snapshot_bytes", "Size of the resolved model snapshot.", ["model"], registry=r
        )
        r.register(_GuardCollector())

    def observe(self, phase: str, seconds: float) -> None:
        self.phase_seconds.labels(phase=phase).observe(seconds)

    def network_attempts(self) -> int:
        return NetworkGuard.install().total


class _GuardCollector(Collector):
    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "gnosis_cache_network_attempts",
            "Connection attempts to a model hub seen by the network guard (blocked: refused in strict mode).",
            labels=["host", "blocked"],
        )
        guard = NetworkGuard.install()
        for (host, blocked), n in sorted(guard.counts.items()):
            family.add_metric([host, "true" if blocked else "false"], n)
        yield family
