"""CACHE -> MODEL: is the model in the cache, complete, and loadable with no network?

Public surface (everything else here is an implementation detail)::

    cache = cache_from_settings(settings)
    resolved = cache.resolve("nanonets/Nanonets-OCR-s", "main", mode="offline")
    resolved.path          # a local snapshot folder proven complete; the process is now offline
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gnosis_ocr.modelcache.cache import ModelCache, ResolvedModel, not_cached_error
from gnosis_ocr.modelcache.metrics import CacheMetrics
from gnosis_ocr.modelcache.status import Fault, SnapshotReport
from gnosis_ocr.modelcache.warm import Progress, WarmOptions, WarmResult

if TYPE_CHECKING:
    from gnosis_ocr.modelcache.loader import ReadOptions
    from gnosis_ocr.settings import Settings

__all__ = [
    "CacheMetrics",
    "Fault",
    "ModelCache",
    "Progress",
    "ResolvedModel",
    "SnapshotReport",
    "WarmOptions",
    "WarmResult",
    "cache_from_settings",
    "not_cached_error",
    "read_options_from_settings",
]


def cache_from_settings(settings: Settings, metrics: CacheMetrics | None = None) -> ModelCache:
    """The one place that turns Settings into a ModelCache (entry points call it)."""
    from gnosis_ocr.modelcache.mounts import cache_bucket

    bucket = cache_bucket(settings.cache_bucket, settings.cache_root)  # the setting, else the mount table's
    return ModelCache(
        settings.cache_root,
        endpoint=settings.hf_endpoint,
        token=settings.token(),
        warm_options=WarmOptions(
            workers=settings.cache_download_workers,
            lease_ttl=settings.cache_lease_ttl,
            lease_wait=settings.cache_lease_wait,
            lease_bucket=bucket,
            lease_bucket_found=settings.cache_bucket is None and bucket is not None,
        ),
        metrics=metrics,
        strict_offline=settings.strict_offline,
    )


def read_options_from_settings(settings: Settings) -> ReadOptions:
    """How engines read weights: workers, chunk size, and whether bytes are hashed on the way."""
    from gnosis_ocr.modelcache.loader import ReadOptions

    return ReadOptions(
        workers=settings.cache_read_workers,
        chunk_bytes=settings.cache_read_chunk_mib * 1024 * 1024,
        verify=settings.verify_on_load == "full",
    )
