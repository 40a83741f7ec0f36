"""Plan, show, then delete: temp files of dead writers, expired leases, snapshots nothing points to."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gnosis_ocr.modelcache.layout import TEMP_MARKER, RepoLayout, is_commit, repo_layout
from gnosis_ocr.modelcache.lease import Lease
from gnosis_ocr.modelcache.status import iter_repo_leftovers, read_ref

logger = logging.getLogger(__name__)

Kind = Literal["temp", "lease", "snapshot"]


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
    root: Path, *, keep: dict[str, set[str]] | None = None, grace: float = 3600.0, now: float | None = None
) -> PrunePlan:
    """What ``execute_prune`` would delete. ``keep`` maps repo id -> commits in use (pinned revisions)."""
    now = time.time() if now is None else now
    items: list[PruneItem] = []
    for repo_id in cached_repos(root):
        layout = repo_layout(root, repo_id)
        items.extend(_temp_items(layout, grace, now))
        lease = Lease(layout.lease_path, ttl=1).read()
        if lease is not None and (lease.expired(now) or lease.owner_dead()):
            items.append(PruneItem(layout.lease_path, "lease", 0, f"expired lease of {lease.host} pid {lease.pid}"))
        items.extend(
            _unreferenced(
                layout,
                (keep or {}).get(repo_id, set()),
                lease_active=lease is not None and not lease.expired(now),
            )
        )
    return PrunePlan(root, tuple(items))


def _temp_items(layout: RepoLayout, grace: float, now: float) -> list[PruneItem]:
    out = []
    host = socket.gethostname().replace(".", "_")[:32]
    for path in iter_repo_leftovers(layout):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        writer = path.name.split(TEMP_MARKER, 1)[1]
        w_host, _, rest = writer.rpartition("-")[0].rpartition("-")
        pid = int(rest) if rest.isdigit() else -1
        dead_here = w_host == host and pid > 0 and not _alive(pid)
        if dead_here or now - st.st_mtime > grace:
            why = "writer process is gone" if dead_here else f"untouched for {int(now - st.st_mtime)} s"
            out.append(PruneItem(path, "temp", st.st_size, f"temp file of a crashed writer ({why})"))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unreferenced(layout: RepoLayout, keep: set[str], *, lease_active: bool) -> list[PruneItem]:
    referenced = set(keep)
    if layout.refs_dir.is_dir():
        for ref in layout.refs_dir.rglob("*"):
            if ref.is_file():
                commit = read_ref(layout, ref.relative_to(layout.refs_dir).as_posix())
                if commit:
                    referenced.add(commit)
    out = []
    try:
        snapshots = [p for p in layout.snapshots_dir.iterdir() if p.is_dir() and is_commit(p.name)]
    except FileNotFoundError:
        snapshots = []
    for snap in snapshots:
        if snap.name in referenced:
            continue
        has_manifest = layout.manifest_path(snap.name).exists()
        if not has_manifest and lease_active:
            continue  # probably being written right now
        size = sum(f.stat().st_size for f in snap.rglob("*") if f.is_file() and not f.is_symlink())
        why = "no branch or tag points to it" if has_manifest else "unfinished download, no manifest"
        out.append(PruneItem(snap, "snapshot", size, f"{layout.repo_id}@{snap.name[:7]}: {why}"))
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
