"""The ready-manifest: written last, it lists every file of a commit with size and sha256.

A snapshot without a valid manifest is never complete, whatever files it holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gnosis_ocr.modelcache.fsutil import atomic_write_bytes
from gnosis_ocr.modelcache.layout import RepoLayout, is_commit, safe_relpath

FORMAT = "gnosis-ocr/manifest/v1"


class ManifestError(ValueError):
    """A manifest file exists but cannot be trusted (unreadable, wrong format, wrong commit)."""


@dataclass(frozen=True)
class ManifestFile:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    repo_id: str
    commit: str
    revision: str
    files: tuple[ManifestFile, ...]
    created_at: str

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def by_path(self) -> dict[str, ManifestFile]:
        return {f.path: f for f in self.files}

    def to_json(self) -> bytes:
        doc = {
            "format": FORMAT,
            "repo_id": self.repo_id,
            "commit": self.commit,
            "revision": self.revision,
            "created_at": self.created_at,
            "total_size": self.total_size,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
        }
        return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes, *, repo_id: str, commit: str) -> Manifest:
        try:
            doc: dict[str, Any] = json.loads(raw)
            if doc.get("format") != FORMAT:
                raise ManifestError(f"unknown manifest format {doc.get('format')!r}")
            files = tuple(
                ManifestFile(path=str(f["path"]), size=int(f["size"]), sha256=str(f["sha256"])) for f in doc["files"]
            )
            manifest = cls(
                repo_id=str(doc["repo_id"]),
                commit=str(doc["commit"]),
                revision=str(doc.get("revision", commit)),
                files=files,
                created_at=str(doc.get("created_at", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestError(f"unreadable manifest: {exc}") from exc
        if manifest.repo_id != repo_id or manifest.commit != commit:
            raise ManifestError(f"manifest is for {manifest.repo_id}@{manifest.commit}, expected {repo_id}@{commit}")
        for f in files:
            safe_relpath(f.path)
            if f.size < 0 or len(f.sha256) != 64:
                raise ManifestError(f"bad entry for {f.path!r}")
        return manifest


def new_manifest(repo_id: str, commit: str, revision: str, files: list[ManifestFile]) -> Manifest:
    return Manifest(
        repo_id=repo_id,
        commit=commit,
        revision=revision,
        files=tuple(sorted(files, key=lambda f: f.path)),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def read_manifest(layout: RepoLayout, commit: str) -> Manifest | None:
    """The manifest of ``commit``, None when there is none; ManifestError when it cannot be trusted."""
    path = layout.manifest_path(commit)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    return Manifest.from_json(raw, repo_id=layout.repo_id, commit=commit)


def write_manifest(layout: RepoLayout, manifest: Manifest) -> Path:
    path = layout.manifest_path(manifest.commit)
    atomic_write_bytes(path, manifest.to_json())
    return path


def manifest_commits(layout: RepoLayout) -> list[str]:
    """Commits that have a manifest file, newest file first."""
    try:
        entries = [p for p in layout.manifests_dir.iterdir() if p.suffix == ".json" and is_commit(p.stem)]
    except FileNotFoundError:
        return []
    entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [p.stem for p in entries]


def read_manifest_file(path: Path) -> dict[str, Any]:
    """Raw manifest document, for tools that copy manifests (push)."""
    doc: dict[str, Any] = json.loads(path.read_bytes())
    return doc
