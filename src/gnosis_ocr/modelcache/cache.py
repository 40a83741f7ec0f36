"""``ModelCache``: status, warm, repair and resolve for models under one cache root.

``resolve`` is what engines call: it returns a local snapshot folder that is proven complete, and from then on
the process is offline for the hub. Under ``offline`` a miss is a ModelNotCachedError naming the missing files
and the command that fixes it; under ``auto`` a miss is warmed first; under ``refresh`` the hub is asked for a
newer commit of the branch, which is downloaded before the branch is switched to it. In every mode a miss that
could not be filled names what the cache lacks first and the hub's failure second. Before the snapshot is handed
out, every file besides the weights (config, tokenizer, chat template, index: small) is hashed against the
manifest; the weights are hashed while the loader reads them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, NoReturn

from gnosis_ocr.errors import (
    CacheCorruptError,
    HubError,
    ModelNotCachedError,
    RepoNotFoundError,
    RevisionNotFoundError,
)
from gnosis_ocr.modelcache.guard import NetworkGuard
from gnosis_ocr.modelcache.hub import HubClient, RemoteSnapshot
from gnosis_ocr.modelcache.layout import RepoLayout, is_commit, repo_layout
from gnosis_ocr.modelcache.manifest import Manifest
from gnosis_ocr.modelcache.metrics import CacheMetrics
from gnosis_ocr.modelcache.offline import go_offline, hub_online
from gnosis_ocr.modelcache.status import Fault, SnapshotReport, hash_faults, inspect_snapshot
from gnosis_ocr.modelcache.warm import Progress, WarmOptions, WarmResult, warm_snapshot

logger = logging.getLogger(__name__)

CacheMode = Literal["auto", "offline", "refresh"]


@dataclass(frozen=True)
class ResolvedModel:
    """A model snapshot proven complete on local (or mounted) disk."""

    repo_id: str
    revision: str
    commit: str
    path: Path
    manifest: Manifest
    hit: bool  # complete before this call, no download needed
    check_seconds: float

    def weight_files(self) -> list[tuple[Path, str]]:
        """(path, sha256) of every safetensors file, for the parallel reader."""
        return [(self.path / f.path, f.sha256) for f in self.manifest.files if is_weight_file(f.path)]


def is_weight_file(path: str) -> bool:
    """Weights are hashed while the loader reads them (``GNOSIS_VERIFY_ON_LOAD``); every other file of the
    manifest is hashed by ``resolve``."""
    return path.endswith(".safetensors")


class ModelCache:
    def __init__(
        self,
        root: Path,
        *,
        endpoint: str,
        token: str | None = None,
        warm_options: WarmOptions | None = None,
        metrics: CacheMetrics | None = None,
        strict_offline: bool = False,
        environ: dict[str, str] | os._Environ[str] | None = None,
    ) -> None:
        self.root = root
        self.endpoint = endpoint
        self._token = token
        self.warm_options = warm_options or WarmOptions()
        self.metrics = metrics or CacheMetrics()
        self.strict_offline = strict_offline
        self._environ = environ if environ is not None else os.environ
        self.guard = NetworkGuard.install()
        self.guard.watch_endpoint(endpoint)

    def __repr__(self) -> str:
        return f"ModelCache({str(self.root)!r}, endpoint={self.endpoint!r})"

    def layout(self, repo_id: str) -> RepoLayout:
        return repo_layout(self.root, repo_id)

    def hub(self) -> HubClient:
        return HubClient(self.endpoint, self._token)

    # -- reading ------------------------------------------------------------------------------------------

    def status(
        self,
        repo_id: str,
        revision: str = "main",
        *,
        full: bool = False,
        on_bytes: Callable[[int], None] | None = None,
    ) -> SnapshotReport:
        started = time.monotonic()
        report = inspect_snapshot(self.layout(repo_id), revision, full=full, workers=2, on_bytes=on_bytes)
        self.metrics.observe("verify" if full else "check", time.monotonic() - started)
        self.metrics.verifications.labels(check=report.check, result="ok" if report.complete else report.state).inc()
        return report

    # -- writing ------------------------------------------------------------------------------------------

    def remote_snapshot(self, repo_id: str, revision: str) -> RemoteSnapshot:
        with hub_online(self._environ):
            return self.hub().snapshot(repo_id, revision)

    def _warm_snapshot(
        self,
        layout: RepoLayout,
        remote: RemoteSnapshot,
        revision: str,
        *,
        progress: Progress | None,
        recheck: bool = False,
    ) -> WarmResult:
        with hub_online(self._environ):
            return warm_snapshot(
                layout,
                remote,
                revision,
                self.hub(),
                options=self.warm_options,
                metrics=self.metrics,
                progress=progress,
                recheck=recheck,
            )

    def warm(
        self,
        repo_id: str,
        revision: str = "main",
        *,
        refresh: bool = False,
        progress: Progress | None = None,
    ) -> WarmResult:
        """Download what is missing. Without ``refresh``, a branch already complete locally is not looked up."""
        layout = self.layout(repo_id)
        if not refresh:
            local = inspect_snapshot(layout, revision)
            if local.complete and local.commit is not None:
                return WarmResult(
                    repo_id, revision, local.commit, layout.snapshot_dir(local.commit), 0, 0, 0, False, 0.0
                )
        remote = self.remote_snapshot(repo_id, revision)
        return self._warm_snapshot(layout, remote, revision, progress=progress)

    def repair(self, repo_id: str, revision: str = "main", *, progress: Progress | None = None) -> WarmResult:
        """Re-hash every file and fetch again the ones that are missing or wrong."""
        layout = self.layout(repo_id)
        local = inspect_snapshot(layout, revision)
        target = local.commit if local.commit is not None else revision
        remote = self.remote_snapshot(repo_id, target)
        return self._warm_snapshot(layout, remote, revision, progress=progress, recheck=True)

    # -- resolving ----------------------------------------------------------------------------------------

    def resolve(
        self,
        repo_id: str,
        revision: str = "main",
        *,
        mode: CacheMode = "auto",
        progress: Progress | None = None,
    ) -> ResolvedModel:
        """A complete local snapshot of ``repo_id@revision``; afterwards the process is offline for the hub."""
        started = time.monotonic()
        layout = self.layout(repo_id)
        report = inspect_snapshot(layout, revision)
        self.metrics.observe("check", time.monotonic() - started)
        hit = report.complete

        if mode == "refresh":
            report = self._refresh(layout, revision, report, progress)
        elif not hit:
            self.metrics.lookups.labels(result="miss").inc()
            if mode == "offline":
                raise not_cached_error(report, self.root)
            logger.info("%s@%s: %s; warming the cache", repo_id, revision, report.summary())
            try:
                self.warm(repo_id, revision, progress=progress)
            except HubError as exc:
                raise_fetch_failed(report, self.root, exc)
            report = inspect_snapshot(layout, revision)
        if not report.complete or report.manifest is None or report.commit is None:
            raise CacheCorruptError(
                f"{report.summary()} even after warming.",
                hint="Run `gnosis-ocr cache verify --full` and `gnosis-ocr cache repair`.",
            )
        snapshot_dir = layout.snapshot_dir(report.commit)
        self._check_small_files(report, report.manifest, snapshot_dir)
        if hit and mode != "refresh":  # a refresh counts its own hit or miss
            self.metrics.lookups.labels(result="hit").inc()
        self.metrics.snapshot_bytes.labels(model=repo_id).set(report.manifest.total_size)
        go_offline(self._environ)
        if self.strict_offline:
            self.guard.strict = True
        return ResolvedModel(
            repo_id,
            revision,
            report.commit,
            snapshot_dir,
            report.manifest,
            hit,
            time.monotonic() - started,
        )

    def _check_small_files(self, report: SnapshotReport, manifest: Manifest, snapshot_dir: Path) -> None:
        """sha256 of every manifest file that is not a weight, before transformers or vLLM reads one: a same-size
        change (a config value, one letter of tokenizer.json) is refused here, naming the file."""
        small = replace(manifest, files=tuple(f for f in manifest.files if not is_weight_file(f.path)))
        started = time.monotonic()
        faults = hash_faults(snapshot_dir, small, workers=2)
        seconds = time.monotonic() - started  # milliseconds: logged, not a phase (the "verify" phase is a full verify)
        logger.debug(
            "%s@%s: %d small file(s), %d bytes, hashed in %.1f ms",
            report.repo_id,
            (report.commit or "")[:7],
            len(small.files),
            small.total_size,
            seconds * 1000,
        )
        self.metrics.verifications.labels(check="load", result="corrupt" if faults else "ok").inc()
        if faults:
            raise corrupt_error(report, faults)

    def _refresh(
        self, layout: RepoLayout, revision: str, local: SnapshotReport, progress: Progress | None
    ) -> SnapshotReport:
        if is_commit(revision) and local.complete:
            self.metrics.lookups.labels(result="hit").inc()
            return local
        try:
            remote = self.remote_snapshot(layout.repo_id, revision)
        except HubError as exc:
            if not local.complete:
                raise_fetch_failed(local, self.root, exc)
            logger.warning(
                "%s@%s: refresh failed (%s); serving cached commit %s",
                layout.repo_id,
                revision,
                exc.message,
                local.commit,
            )
            self.metrics.lookups.labels(result="hit").inc()
            return local
        if remote.commit == local.commit and local.complete:
            self.metrics.lookups.labels(result="hit").inc()
            return local
        self.metrics.lookups.labels(result="miss").inc()
        try:
            self._warm_snapshot(layout, remote, revision, progress=progress)
        except HubError as exc:
            if local.complete:  # the cache is fine (an older commit): the new commit's download is what failed
                raise
            raise_fetch_failed(local, self.root, exc)
        return inspect_snapshot(layout, revision)


def _rev(report: SnapshotReport) -> str:
    return report.revision + (f" ({report.commit[:7]})" if report.commit and report.commit != report.revision else "")


def describe_faults(faults: tuple[Fault, ...], limit: int = 5) -> str:
    """The faults for a message: ``tokenizer.json is missing; config.json: size 3 bytes, expected 5``."""

    def one(fault: Fault) -> str:
        if fault.kind == "manifest":
            return fault.detail
        return f"{fault.path} is missing" if fault.detail == "missing" else str(fault)

    shown = "; ".join(one(f) for f in faults[:limit])
    return shown + (f"; and {len(faults) - limit} more" if len(faults) > limit else "")


def _what_is_wrong(report: SnapshotReport, root: Path) -> str:
    name = f"Model {report.repo_id!r} (rev {_rev(report)})"
    if report.state == "absent":
        return f"{name} is not in the cache in {root}"
    return f"{name} is incomplete in {root}: {describe_faults(report.faults)}"


def not_cached_error(report: SnapshotReport, root: Path) -> ModelNotCachedError:
    return ModelNotCachedError(
        f"{_what_is_wrong(report, root)}. Network downloads are off (GNOSIS_CACHE_MODE=offline).",
        hint=f"Run `gnosis-ocr cache warm {report.repo_id}` where the network is reachable, "
        "or mount a bucket that `gnosis-ocr cache push` filled.",
    )


def raise_fetch_failed(report: SnapshotReport, root: Path, exc: HubError) -> NoReturn:
    """A miss that the hub could not fill: what the cache lacks first, the hub's failure second.

    It is a ModelNotCachedError (CLI exit 3, HTTP 503), not a HubError (exit 4): the fault to fix is in the cache
    (the same fault exits 3 under ``offline``), the network only explains why ``auto`` could not fix it itself,
    and the fix is a warm or repair wherever the hub is reachable, not a change to this host's network. The
    one exception: nothing of the model is cached and the hub says the model or revision does not exist; then
    the name is the cause and the hub's own error goes on unchanged.
    """
    if report.state == "absent" and isinstance(exc, RepoNotFoundError | RevisionNotFoundError):
        raise exc
    if report.state == "absent":
        fetching, command = "downloading it", "warm"
    else:
        files = [f for f in report.faults if f.kind != "manifest"]
        fetching, command = ("fetching it" if len(files) <= 1 else "fetching them"), "repair"
    raise ModelNotCachedError(
        f"{_what_is_wrong(report, root)}; {fetching} from the hub failed: {exc.message}",
        hint=f"Run `gnosis-ocr cache {command} {report.repo_id}` where the hub is reachable, "
        "or mount a bucket that `gnosis-ocr cache push` filled.",
    ) from exc


def corrupt_error(report: SnapshotReport, faults: tuple[Fault, ...]) -> CacheCorruptError:
    one = len(faults) == 1
    names = ", ".join(f.path for f in faults[:5]) + (", ..." if len(faults) > 5 else "")
    return CacheCorruptError(
        f"{names} {'does' if one else 'do'} not match {'its' if one else 'their'} sha256 in the ready-manifest of "
        f"{report.repo_id!r} (rev {_rev(report)}) ({describe_faults(faults)}): the cached "
        f"{'file is' if one else 'files are'} corrupt, so the model was not loaded.",
        hint=f"Run `gnosis-ocr cache repair {report.repo_id}` to fetch {'it' if one else 'them'} again "
        "(`gnosis-ocr cache verify --full` lists every bad file).",
    )
