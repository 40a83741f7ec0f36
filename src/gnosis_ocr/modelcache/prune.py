"""Plan, show, then delete: temp files of dead writers, stale leases, unlisted files in finished snapshots, and
snapshots nothing points to.

A temp file (``*.gnosis-tmp-<host>-<pid>-<rand>``) goes when its writer is provably dead (this host, pid gone),
or when it has been untouched for longer than the lease TTL and its writer holds no live lease: a live writer
renews its lease every TTL/3, so one silent for a whole TTL is one the lease gives up on as well.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gnosis_ocr.modelcache.layout import RepoLayout, is_commit, repo_layout
from gnosis_ocr.modelcache.lease import Lease, LeaseInfo
from gnosis_ocr.modelcache.manifest import ManifestError, read_manifest
from gnosis_ocr.modelcache.status import (
    host_tag,
    iter_repo_leftovers,
    list_snapshot,
    read_ref,
    stale_lease,
    temp_writer,
)

logger = logging.getLogger(__name__)

Kind = Literal["temp", "lease", "unexpected", "snapshot"]
DEFAULT_TTL = 60.0  # GNOSIS_CACHE_LEASE_TTL's default; the CLI passes the configured value


@dataclass(frozen=True)
class PruneItem:
    path: Path
    kind: Kind
    bytes: int
    reason: str


@dataclass(frozen=True)
class PrunePlan:
    root: Path
    items: tuple[PruneItem, ...]

    @property
    def bytes(self) -> int:
        return sum(i.bytes for i in self.items)


def cached_repos(root: Path) -> list[str]:
    hub = root / "hub"
    try:
        names = sorted(p.name for p in hub.iterdir() if p.is_dir() and p.name.startswith("models--"))
    except FileNotFoundError:
        return []
    return [n.removeprefix("models--").replace("--", "/") for n in names]


def plan_prune(
    root: Path, *, keep: dict[str, set[str]] | None = None, grace: float = DEFAULT_TTL, now: float | None = None
) -> PrunePlan:
    """What ``execute_prune`` would delete. ``keep`` maps repo id -> commits in use (pinned revisions);
    ``grace`` is the lease TTL: temp files untouched for longer, whose writer holds no live lease, are abandoned."""
    now = time.time() if now is None else now
    items: list[PruneItem] = []
    for repo_id in cached_repos(root):
        layout = repo_layout(root, repo_id)
        stale = stale_lease(layout, now)
        live = None if stale is not None else Lease(layout.lease_path, ttl=1).read()
        items.extend(_temp_items(layout, grace, now, live))
        if stale is not None:
            items.append(PruneItem(layout.lease_path, "lease", 0, f"stale lease of {stale.host} pid {stale.pid}"))
        items.extend(_unlisted_items(layout))
        items.extend(_unreferenced(layout, (keep or {}).get(repo_id, set()), lease_active=live is not None))
    return PrunePlan(root, tuple(items))


def _temp_items(layout: RepoLayout, grace: float, now: float, live: LeaseInfo | None) -> list[PruneItem]:
    out = []
    here = host_tag()
    holder = (host_tag(live.host), live.pid) if live is not None else None
    for path in iter_repo_leftovers(layout):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        writer = temp_writer(path.name)
        age = now - st.st_mtime
        if writer is not None and writer.host == here and writer.pid > 0 and not _alive(writer.pid):
            why = f"its writer, pid {writer.pid} on this host, is gone"
        elif age > grace and (writer is None or (writer.host, writer.pid) != holder):
            why = f"untouched for {int(age)} s, longer than the lease TTL ({grace:g} s), and its writer holds no lease"
        else:
            continue
        out.append(PruneItem(path, "temp", st.st_size, f"temp file of an interrupted writer: {why}"))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unlisted_items(layout: RepoLayout) -> list[PruneItem]:
    """Files in a finished snapshot that its manifest does not list: no writer makes them (writers create only temp
    names and the manifest's names), so they are debris, e.g. a ``*.incomplete`` of another tool."""
    out = []
    for commit in _snapshot_commits(layout):
        try:
            manifest = read_manifest(layout, commit)
        except ManifestError:
            continue  # an untrusted manifest is repair's business, not prune's
        if manifest is None:
            continue  # an unfinished download: its files are progress, not debris
        snap = layout.snapshot_dir(commit)
        listing = list_snapshot(snap)
        for rel in listing.unlisted(manifest):
            entry = listing.entries[rel]
            out.append(
                PruneItem(
                    snap / rel,
                    "unexpected",
                    entry.size,
                    f"{layout.repo_id}@{commit[:7]}: unexpected file, not listed in the manifest",
                )
            )
    return out


def _snapshot_commits(layout: RepoLayout) -> list[str]:
    try:
        return sorted(p.name for p in layout.snapshots_dir.iterdir() if p.is_dir() and is_commit(p.name))
    except FileNotFoundError:
        return []


def _unreferenced(layout: RepoLayout, keep: set[str], *, lease_active: bool) -> list[PruneItem]:
    referenced = set(keep)
    if layout.refs_dir.is_dir():
        for ref in layout.refs_dir.rglob("*"):
            if ref.is_file():
                commit = read_ref(layout, ref.relative_to(layout.refs_dir).as_posix())
                if commit:
                    referenced.add(commit)
    out = []
    for name in _snapshot_commits(layout):
        if name in referenced:
            continue
        snap = layout.snapshot_dir(name)
        has_manifest = layout.manifest_path(name).exists()
        if not has_manifest and lease_active:
            continue  # probably being written right now
        size = sum(f.stat().st_size for f in snap.rglob("*") if f.is_file() and not f.is_symlink())
        why = "no branch or tag points to it" if has_manifest else "unfinished download, no manifest"
        out.append(PruneItem(snap, "snapshot", size, f"{layout.repo_id}@{name[:7]}: {why}"))
    return out


def execute_prune(plan: PrunePlan) -> int:
    """Delete what the plan lists; returns bytes freed. A snapshot loses its manifest before its files."""
    freed = 0
    for item in plan.items:
        with contextlib.suppress(FileNotFoundError):
            if item.kind == "snapshot":
                repo_dir = item.path.parent.parent
                manifest = repo_dir / ".gnosis" / "manifests" / f"{item.path.name}.json"
                with contextlib.suppress(FileNotFoundError):
                    manifest.unlink()
                shutil.rmtree(item.path)
            else:
                item.path.unlink()
            freed += item.bytes
            logger.info("pruned %s (%s)", item.path, item.reason)
    return freed
