"""Only the hub's failures are the hub's: a bug raised while a download runs propagates at once with its own type
(never retried as a network failure, never reworded as "could not reach the hub"); a refused connection or a 5xx
answer is retried; an answer that another try would only repeat (403) is not."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from gnosis_ocr.errors import HubError
from gnosis_ocr.modelcache import ModelCache
from gnosis_ocr.modelcache.hub import HubClient
from gnosis_ocr.modelcache.layout import TEMP_MARKER
from gnosis_ocr.modelcache.metrics import CacheMetrics
from gnosis_ocr.modelcache.warm import WarmOptions, warm_snapshot
from tests.conftest import REPO
from tests.support.hubserver import LocalHub


class _BuggyProgress:
    """A progress reporter with a bug: it runs inside the download loop, while the hub's stream is open."""

    def start(self, total_bytes: int, description: str) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        raise KeyError("a bug in code that runs while the stream is open")


def _downloads(hub: LocalHub) -> list[str]:
    return [r.path for r in hub.records if r.method == "GET" and "/resolve/" in r.path]


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if TEMP_MARKER in p.name]


def test_a_bug_during_a_download_propagates_at_once_and_is_not_retried(
    cache: ModelCache, hub: LocalHub, cache_root: Path
) -> None:
    cache.warm_options = WarmOptions(workers=1, lease_ttl=5, lease_wait=30)
    started = time.monotonic()
    with pytest.raises(KeyError, match="a bug in code"):
        cache.warm(REPO, progress=_BuggyProgress())
    assert time.monotonic() - started < 5  # no backoff sleeps (1 + 2 + 4 + 8 + 8 s for five retries)
    fetched = _downloads(hub)
    assert len(fetched) == len(set(fetched))  # no file asked for twice: nothing was retried
    assert len(fetched) < len(hub.commit_files(REPO))  # and the files after the failure were not started
    assert _leftovers(cache_root) == []  # the temp file went with the error
    assert not cache.status(REPO).complete


def test_a_bug_in_the_library_is_not_taken_for_a_network_failure(
    cache_root: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx2

    client = HubClient(hub.endpoint)
    remote = client.snapshot(REPO, "main")

    # the lowest seam: the HTTP client's response body, as the library hands it to the download
    def broken(self: object, chunk_size: int | None = None) -> object:
        raise TypeError("iter_bytes() got confused")

    monkeypatch.setattr(httpx2.Response, "iter_bytes", broken)
    layout = ModelCache(cache_root, endpoint=hub.endpoint).layout(REPO)
    with pytest.raises(TypeError, match="got confused"):
        warm_snapshot(
            layout, remote, "main", client, options=WarmOptions(workers=1, lease_ttl=5), metrics=CacheMetrics()
        )
    fetched = _downloads(hub)
    assert fetched and len(fetched) == len(set(fetched))
    assert _leftovers(cache_root) == []


def test_a_refused_connection_is_retried_then_named(
    cache_root: Path, hub: LocalHub, caplog: pytest.LogCaptureFixture
) -> None:
    client = HubClient(hub.endpoint, retries=2)
    remote = client.snapshot(REPO, "main")
    layout = ModelCache(cache_root, endpoint=hub.endpoint).layout(REPO)
    hub.stop()  # nothing listens on the port any more: every download is a refused connection
    caplog.set_level(logging.WARNING, logger="gnosis_ocr.modelcache.hub")
    with pytest.raises(HubError, match="Could not reach the model hub") as info:
        warm_snapshot(
            layout,
            remote,
            "main",
            client,
            options=WarmOptions(workers=1, lease_ttl=5, lease_wait=30),
            metrics=CacheMetrics(),
        )
    assert "ConnectError" in info.value.message
    first = remote.files[0].path
    retries = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{REPO}/{first}: retrying")]
    assert [m.rsplit("(", 1)[1] for m in retries] == ["attempt 2/3)", "attempt 3/3)"]  # then it gave up
    assert _leftovers(cache_root) == []


def test_an_answer_that_would_repeat_is_not_retried(cache: ModelCache, hub: LocalHub) -> None:
    hub.fail_next(1, status=403, path_contains="/resolve/")
    cache.warm_options = WarmOptions(workers=1, lease_ttl=5, lease_wait=30)
    started = time.monotonic()
    with pytest.raises(HubError, match="403"):
        cache.warm(REPO)
    assert time.monotonic() - started < 5
    fetched = _downloads(hub)
    assert len(fetched) == len(set(fetched))  # the 403 was not asked again


def test_a_server_error_is_retried(cache: ModelCache, hub: LocalHub) -> None:
    hub.fail_next(1, status=503, path_contains="/resolve/")
    cache.warm_options = WarmOptions(workers=1, lease_ttl=5, lease_wait=30)
    cache.warm(REPO)
    assert cache.status(REPO, full=True).complete
    first = _downloads(hub)[0]
    assert _downloads(hub).count(first) == 2  # the 503, then the file
