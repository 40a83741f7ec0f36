"""Is a model complete in the cache? Fast (names, sizes, file types) or full (sha256) checks.

Listing the disk and comparing it with a manifest are kept apart: ``compare`` is pure and returns frozen
results; ``inspect_snapshot`` does the I/O. Nothing here writes, so it is safe on a read-only mount.
"""

from __future__ import annotations

import os
import socket
import stat
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gnosis_ocr.modelcache.hashing import sha256_file
from gnosis_ocr.modelcache.layout import TEMP_MARKER, RepoLayout, is_commit, is_temp_name, safe_relpath
from gnosis_ocr.modelcache.lease import Lease, LeaseInfo
from gnosis_ocr.modelcache.manifest import Manifest, ManifestError, manifest_commits, read_manifest

State = Literal["complete", "incomplete", "absent"]
FaultKind = Literal["missing", "size", "hash", "not_regular", "unexpected", "manifest"]


@dataclass(frozen=True)
class Fault:
    path: str
    kind: FaultKind
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


@dataclass(frozen=True)
class Entry:
    """One thing found in a snapshot folder."""

    path: str
    size: int
    regular: bool


@dataclass(frozen=True)
class SnapshotReport:
    repo_id: str
    revision: str
    commit: str | None
    state: State
    snapshot_dir: Path | None
    manifest: Manifest | None
    faults: tuple[Fault, ...] = ()
    leftovers: tuple[str, ...] = ()
    size_on_disk: int = 0
    check: Literal["fast", "full"] = "fast"
    stale_lease: str | None = None

    @property
    def fix(self) -> str | None:
        """The one command that repairs what this report found, or None when there is nothing to repair.

        Every state has its command (docs/CACHE.md, "What status reports and what fixes it"): absent -> warm;
        a missing, truncated, corrupt or non-regular file or a bad manifest -> repair (it re-fetches; it also
        removes unlisted files); only unlisted files -> repair (``prune --yes`` does it without the hub);
        complete but with temp files of an interrupted writer or a stale lease -> ``prune --yes``.
        """
        target = self.repo_id + ("" if self.revision == "main" else f" --revision {self.revision}")
        if self.state == "absent":
            return f"gnosis-ocr cache warm {target}"
        if self.state == "incomplete":
            return f"gnosis-ocr cache repair {target}"
        if self.leftovers or self.stale_lease:
            return "gnosis-ocr cache prune --yes"
        return None

    @property
    def complete(self) -> bool:
        return self.state == "complete"

    @property
    def expected_size(self) -> int | None:
        return self.manifest.total_size if self.manifest else None

    def to_dict(self) -> dict[str, Any]:
        """The report as `cache status --json` prints it (the edges add where the cache is and its policy)."""
        return {
            "model": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
            "state": self.state,
            "check": self.check,
            "path": str(self.snapshot_dir) if self.snapshot_dir else None,
            "files": len(self.manifest.files) if self.manifest else None,
            "size_bytes": self.size_on_disk,
            "expected_bytes": self.expected_size,
            "faults": [{"path": f.path, "kind": f.kind, "detail": f.detail} for f in self.faults],
            "leftovers": list(self.leftovers),
            "stale_lease": self.stale_lease,
            "fix": self.fix,
        }

    def summary(self) -> str:
        name = f"{self.repo_id}@{self.revision}"
        if self.commit and self.commit != self.revision:
            name += f" ({self.commit[:7]})"
        if self.state == "absent":
            return f"{name} is not in the cache"
        if self.state == "complete":
            return f"{name} is complete ({len(self.manifest.files) if self.manifest else 0} files)"
        shown = ", ".join(str(f) for f in self.faults[:4])
        more = f" and {len(self.faults) - 4} more" if len(self.faults) > 4 else ""
        return f"{name} is incomplete: {len(self.faults)} problem(s): {shown}{more}"


@dataclass
class ListingResult:
    entries: dict[str, Entry] = field(default_factory=dict)
    leftovers: list[str] = field(default_factory=list)

    def unlisted(self, manifest: Manifest) -> list[str]:
        """Files on disk that the manifest does not list (temp files aside): what ``repair`` and ``prune`` remove."""
        return sorted(set(self.entries) - set(manifest.by_path()))


def list_snapshot(snapshot_dir: Path) -> ListingResult:
    """Every file under ``snapshot_dir`` (relative posix paths), without following links."""
    result = ListingResult()
    for dirpath, dirnames, filenames in os.walk(snapshot_dir):
        base = Path(dirpath)
        names = list(filenames)
        # a symlink to a directory shows up in dirnames; treat it as a (non-regular) file
        for d in list(dirnames):
            if (base / d).is_symlink():
                dirnames.remove(d)
                names.append(d)
        for name in names:
            full = base / name
            rel = full.relative_to(snapshot_dir).as_posix()
            if is_temp_name(name):
                result.leftovers.append(rel)
                continue
            try:
                st = full.lstat()
            except FileNotFoundError:
                continue
            result.entries[rel] = Entry(path=rel, size=st.st_size, regular=stat.S_ISREG(st.st_mode))
    result.leftovers.sort()
    return result


def compare(manifest: Manifest, entries: dict[str, Entry]) -> tuple[Fault, ...]:
    """Names, sizes and file types of ``entries`` against ``manifest``; pure."""
    faults: list[Fault] = []
    expected = manifest.by_path()
    for path, want in expected.items():
        got = entries.get(path)
        if got is None:
            faults.append(Fault(path, "missing", "missing"))
        elif not got.regular:
            faults.append(Fault(path, "not_regular", "not a regular file (symlink or special file)"))
        elif got.size != want.size:
            faults.append(Fault(path, "size", f"size {got.size} bytes, expected {want.size}"))
    for path in sorted(set(entries) - set(expected)):
        faults.append(Fault(path, "unexpected", "unexpected file, not listed in the manifest"))
    return tuple(faults)


def hash_faults(
    snapshot_dir: Path,
    manifest: Manifest,
    *,
    workers: int = 2,
    on_bytes: Callable[[int], None] | None = None,
) -> tuple[Fault, ...]:
    """sha256 of every manifest file (in parallel) against the manifest."""

    def one(path: str, sha: str, size: int) -> Fault | None:
        try:
            got = sha256_file(snapshot_dir / safe_relpath(path))
        except OSError as exc:
            return Fault(path, "missing", f"unreadable: {exc.strerror}")
        finally:
            if on_bytes is not None:
                on_bytes(size)
        return None if got == sha else Fault(path, "hash", f"sha256 {got[:12]}…, expected {sha[:12]}…")

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
        results = list(pool.map(lambda f: one(f.path, f.sha256, f.size), manifest.files))
    return tuple(f for f in results if f is not None)


def read_ref(layout: RepoLayout, ref: str) -> str | None:
    try:
        value = layout.ref_path(ref).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return value if is_commit(value) else None


def local_commit(layout: RepoLayout, revision: str) -> str | None:
    """The commit a revision names, from disk alone.

    A commit sha names itself; a branch or tag is read from ``refs/``; if the ref was never written (a writer
    died between manifest and ref), the newest manifest made for that revision stands in.
    """
    if is_commit(revision):
        return revision
    commit = read_ref(layout, revision)
    if commit is not None:
        return commit
    for candidate in manifest_commits(layout):
        try:
            manifest = read_manifest(layout, candidate)
        except ManifestError:
            continue
        if manifest is not None and manifest.revision == revision:
            return candidate
    return None


def inspect_snapshot(
    layout: RepoLayout,
    revision: str,
    *,
    full: bool = False,
    workers: int = 2,
    on_bytes: Callable[[int], None] | None = None,
) -> SnapshotReport:
    """The state of ``repo@revision`` in the cache. ``full`` adds a sha256 of every file."""
    check: Literal["fast", "full"] = "full" if full else "fast"
    commit = local_commit(layout, revision)
    # temp files anywhere in the repository folder (snapshot files, manifest, ref, lease): a killed writer may
    # have died before its commit was on record, and they must show right after the kill
    leftovers = repo_leftovers(layout)
    stale = describe_lease(stale_lease(layout))
    if commit is None:
        orphans = _orphan_snapshots(layout)
        if orphans:
            fault = Fault(
                "(manifest)",
                "manifest",
                f"no ref or manifest for {revision!r}; {len(orphans)} unfinished snapshot folder(s) found",
            )
            return SnapshotReport(
                layout.repo_id,
                revision,
                None,
                "incomplete",
                None,
                None,
                (fault,),
                leftovers,
                check=check,
                stale_lease=stale,
            )
        return SnapshotReport(
            layout.repo_id, revision, None, "absent", None, None, (), leftovers, check=check, stale_lease=stale
        )

    snapshot_dir = layout.snapshot_dir(commit)
    listing = list_snapshot(snapshot_dir) if snapshot_dir.is_dir() else ListingResult()
    on_disk = sum(e.size for e in listing.entries.values())
    try:
        manifest = read_manifest(layout, commit)
    except ManifestError as exc:
        fault = Fault("(manifest)", "manifest", f"manifest cannot be trusted: {exc}")
        return SnapshotReport(
            layout.repo_id,
            revision,
            commit,
            "incomplete",
            snapshot_dir,
            None,
            (fault,),
            leftovers,
            on_disk,
            check,
            stale,
        )
    if manifest is None:
        if not listing.entries and not snapshot_dir.is_dir():
            return SnapshotReport(
                layout.repo_id, revision, commit, "absent", None, None, (), leftovers, check=check, stale_lease=stale
            )
        fault = Fault("(manifest)", "manifest", "no ready-manifest: the download never finished")
        return SnapshotReport(
            layout.repo_id,
            revision,
            commit,
            "incomplete",
            snapshot_dir,
            None,
            (fault,),
            leftovers,
            on_disk,
            check,
            stale,
        )

    faults = compare(manifest, listing.entries)
    if full and not faults:
        faults = hash_faults(snapshot_dir, manifest, workers=workers, on_bytes=on_bytes)
    state: State = "incomplete" if faults else "complete"
    return SnapshotReport(
        layout.repo_id,
        revision,
        commit,
        state,
        snapshot_dir,
        manifest,
        faults,
        leftovers,
        on_disk,
        check,
        stale,
    )


def _orphan_snapshots(layout: RepoLayout) -> list[str]:
    """Snapshot folders without a manifest: downloads that never finished (complete ones of other
    revisions are not evidence that *this* revision was ever started)."""
    try:
        return [
            p.name
            for p in layout.snapshots_dir.iterdir()
            if p.is_dir() and not (is_commit(p.name) and layout.manifest_path(p.name).exists())
        ]
    except FileNotFoundError:
        return []


def iter_repo_leftovers(layout: RepoLayout) -> Iterator[Path]:
    """Temp files anywhere in the repository folder (crashed writers)."""
    if not layout.repo_dir.is_dir():
        return
    for dirpath, _dirnames, filenames in os.walk(layout.repo_dir):
        for name in filenames:
            if is_temp_name(name):
                yield Path(dirpath) / name


def repo_leftovers(layout: RepoLayout) -> tuple[str, ...]:
    """Temp files of the repository, as paths relative to its folder (``snapshots/<commit>/x.gnosis-tmp-...``)."""
    try:
        return tuple(sorted(p.relative_to(layout.repo_dir).as_posix() for p in iter_repo_leftovers(layout)))
    except OSError:  # a flaky mount: leftovers are advice, never a reason to fail a check
        return ()


@dataclass(frozen=True)
class TempWriter:
    """Who wrote a temp file, from its name ``<name>.gnosis-tmp-<host>-<pid>-<rand>``."""

    host: str
    pid: int


def temp_writer(name: str) -> TempWriter | None:
    if TEMP_MARKER not in name:
        return None
    writer = name.split(TEMP_MARKER, 1)[1]
    host, _, pid = writer.rpartition("-")[0].rpartition("-")
    return TempWriter(host, int(pid)) if host and pid.isdigit() else None


def host_tag(host: str | None = None) -> str:
    """A host name as temp file names carry it (see ``fsutil.temp_path``)."""
    return (socket.gethostname() if host is None else host).replace(".", "_")[:32] or "host"


def stale_lease(layout: RepoLayout, now: float | None = None) -> LeaseInfo | None:
    """The writer lease when it is stale: expired, or its owner is a dead process on this host."""
    try:
        lease = Lease(layout.lease_path, ttl=1).read()
        if lease is None:
            return None
        return lease if lease.expired(time.time() if now is None else now) or lease.owner_dead() else None
    except OSError:
        return None


def describe_lease(lease: LeaseInfo | None) -> str | None:
    if lease is None:
        return None
    return f"stale writer lease of {lease.host} pid {lease.pid} (expired or its process is gone)"
