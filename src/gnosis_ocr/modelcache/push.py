"""Copy a complete snapshot to an object store (``gs://``, ``s3://``, anything fsspec knows), manifest last.

The destination gets the same layout as a cache root, so a bucket filled by ``push`` and mounted at
``/cache`` (``MODEL_CACHE_PATH=/cache/huggingface`` with ``gs://bucket/huggingface``) serves at once. Every
byte is hashed on its way up and checked against the ready-manifest: a corrupt local cache is never pushed.
Objects already at the destination with the right size are kept (a re-run resumes). Order: files, then the
manifest, then the branch ref.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gnosis_ocr.errors import ConfigError, PushError
from gnosis_ocr.modelcache.layout import RepoLayout, is_commit
from gnosis_ocr.modelcache.status import SnapshotReport
from gnosis_ocr.modelcache.warm import NullProgress, Progress

logger = logging.getLogger(__name__)

CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class PushResult:
    destination: str
    commit: str
    uploaded_files: int
    uploaded_bytes: int
    kept_files: int
    seconds: float


def split_url(url: str) -> tuple[str, str]:
    """('gs', 'bucket/prefix') from 'gs://bucket/prefix/'."""
    if "://" not in url:
        raise ConfigError(f"{url!r} is not an object store URL.", hint="Use gs://bucket/prefix or s3://bucket/prefix.")
    protocol, rest = url.split("://", 1)
    rest = rest.strip("/")
    if not protocol or not rest or ".." in rest.split("/"):
        raise ConfigError(f"{url!r} is not an object store URL.", hint="Use gs://bucket/prefix or s3://bucket/prefix.")
    return protocol, rest


def push_snapshot(
    layout: RepoLayout,
    report: SnapshotReport,
    url: str,
    *,
    storage_options: dict[str, Any] | None = None,
    progress: Progress | None = None,
    filesystem: Any = None,
) -> PushResult:
    """Upload ``report``'s snapshot (which must be complete) under ``url`` as a cache root."""
    import fsspec

    if not report.complete or report.manifest is None or report.commit is None:
        raise PushError(
            f"Refusing to push: {report.summary()}.",
            hint="Run `gnosis-ocr cache warm` (or `repair`) first; only complete snapshots are pushed.",
        )
    protocol, base = split_url(url)
    try:
        fs = filesystem or fsspec.filesystem(protocol, **(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise PushError(
            f"No filesystem for {protocol}://: {exc}",
            hint="Install the extra: pip install 'gnosis-ocr[gcs]' or 'gnosis-ocr[s3]'.",
        ) from exc
    started = time.monotonic()
    progress = progress or NullProgress()
    manifest, commit = report.manifest, report.commit
    rel_repo = layout.repo_dir.relative_to(layout.root).as_posix()
    remote_repo = f"{base}/{rel_repo}"
    progress.start(manifest.total_size, f"push {layout.repo_id}@{commit[:7]}")
    uploaded = kept = nbytes = 0
    try:
        for entry in manifest.files:
            dest = f"{remote_repo}/snapshots/{commit}/{entry.path}"
            if _remote_size(fs, dest) == entry.size:
                kept += 1
                progress.advance(entry.size)
                continue
            _upload(fs, layout.file_path(commit, entry.path), dest, entry.sha256, progress.advance)
            uploaded += 1
            nbytes += entry.size
        fs.pipe_file(f"{remote_repo}/.gnosis/manifests/{commit}.json", manifest.to_json())
        if not is_commit(report.revision):
            fs.pipe_file(f"{remote_repo}/refs/{report.revision}", commit.encode())
    except PushError:
        raise
    except Exception as exc:
        raise PushError(
            f"Push to {url} failed: {type(exc).__name__}: {exc}",
            hint="Check the bucket name and credentials; a re-run resumes where this stopped.",
        ) from exc
    result = PushResult(url, commit, uploaded, nbytes, kept, time.monotonic() - started)
    logger.info(
        "pushed %s@%s to %s: %d uploaded (%d bytes), %d kept",
        layout.repo_id,
        commit[:7],
        url,
        uploaded,
        nbytes,
        kept,
    )
    return result


def _remote_size(fs: Any, path: str) -> int | None:
    try:
        return int(fs.info(path)["size"])
    except FileNotFoundError:
        return None


def _upload(fs: Any, src: Any, dest: str, sha256: str, on_bytes: Callable[[int], None]) -> None:
    digest = hashlib.sha256()
    with src.open("rb") as fin, fs.open(dest, "wb") as fout:
        while chunk := fin.read(CHUNK):
            digest.update(chunk)
            fout.write(chunk)
            on_bytes(len(chunk))
    if digest.hexdigest() != sha256:
        fs.rm_file(dest)  # never leave a bad object that a re-run would keep for its size
        raise PushError(
            f"{src} changed or is corrupt (sha256 differs from the manifest); push stopped.",
            hint="Run `gnosis-ocr cache verify --full` and `gnosis-ocr cache repair`.",
        )
