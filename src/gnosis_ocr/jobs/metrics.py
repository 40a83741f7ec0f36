"""Prometheus metrics of service jobs, on the app's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gnosis_ocr.engines.base import EngineInfo

PAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
JOB_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)


class JobMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.jobs = Counter("gnosis_jobs", "Jobs by how they ended (done, failed, cancelled).", ["status"], registry=r)
        self.submitted = Counter("gnosis_jobs_submitted", "Jobs accepted by POST /api/v1/jobs.", registry=r)
        self.pages = Counter(
            "gnosis_pages",
            "Pages processed by result (done, failed) and source (ocr, text-layer, fallback-text-layer, "
            "fallback-tesseract: a page the VLM looped on).",
            ["status", "source"],
            registry=r,
        )
        self.page_seconds = Histogram(
            "gnosis_page_seconds",
            "Engine seconds per page (text-layer pages excluded).",
            ["engine"],
            buckets=PAGE_BUCKETS,
            registry=r,
        )
        self.job_seconds = Histogram(
            "gnosis_job_seconds", "Seconds from a job's start to its end.", buckets=JOB_BUCKETS, registry=r
        )
        self.page_retries = Counter(
            "gnosis_page_retries", "VLM pages read again because the loop guard found them looping.", registry=r
        )
        self.page_fallbacks = Counter(
            "gnosis_page_fallbacks",
            "VLM pages that kept looping and were taken from their text layer or another engine.",
            ["to"],
            registry=r,
        )
        self.engine_info = Gauge(
            "gnosis_engine_info",
            "Engines loaded (1 each): name, backend (vllm, transformers), model, its commit, profile, device.",
            ["name", "backend", "model", "revision", "profile", "device"],
            registry=r,
        )
        self.queued = Gauge("gnosis_jobs_queued", "Jobs waiting for the worker.", registry=r)
        self.running = Gauge("gnosis_jobs_running", "Jobs whose pages are being read.", registry=r)
        self.resumed = Counter(
            "gnosis_jobs_resumed", "Unfinished jobs taken over after a restart or from a silent instance.", registry=r
        )

    def engine_loaded(self, info: EngineInfo) -> None:
        self.engine_info.labels(
            name=info.name,
            backend=info.backend or "",
            model=info.model or "",
            revision=info.revision or "",
            profile=info.profile or "",
            device=info.device,
        ).set(1)
