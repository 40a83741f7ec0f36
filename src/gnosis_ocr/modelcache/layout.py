"""Path arithmetic for the cache. This module alone knows where things live.

The layout is the Hugging Face hub cache, so ``hf cache ls`` and ``scan_cache_dir`` read it::

    <root>/hub/models--org--name/
        refs/main                       commit sha of the branch, written after the manifest
        snapshots/<commit>/...          real files (no symlinks: bucket mounts cannot store them)
        blobs/                          kept empty; present for tools that expect it
        .gnosis/manifests/<commit>.json ready-manifest, written last: the proof of completeness
        .gnosis/lease.json              best-effort single-writer lease

``hub/`` itself holds only ``models--*`` folders (and huggingface_hub's ``.locks``): anything else there makes
``scan_cache_dir`` warn, so our bookkeeping lives inside each repository folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from gnosis_ocr.errors import ConfigError

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
TEMP_MARKER = ".gnosis-tmp-"


def is_commit(revision: str) -> bool:
    return bool(_COMMIT.match(revision))


def validate_repo_id(repo_id: str) -> str:
    if not _REPO_ID.match(repo_id) or ".." in repo_id or "--" in repo_id:
        raise ConfigError(
            f"Model id {repo_id!r} is not a valid repository id.",
            hint="Use the hub's form 'org/name', e.g. 'nanonets/Nanonets-OCR-s'.",
        )
    return repo_id


def safe_relpath(path: str) -> PurePosixPath:
    """A repository file path that stays inside its snapshot folder, or ConfigError."""
    rel = PurePosixPath(path)
    if not path or rel.is_absolute() or any(part in ("", ".", "..") for part in rel.parts) or "\\" in path:
        raise ConfigError(f"Refusing repository path {path!r}: it would leave the snapshot folder.")
    if TEMP_MARKER in rel.name:
        raise ConfigError(f"Refusing repository path {path!r}: the name collides with gnosis-ocr temp files.")
    return rel


@dataclass(frozen=True)
class RepoLayout:
    """Where one repository's files live under a cache root."""

    root: Path
    repo_id: str

    @property
    def hub_dir(self) -> Path:
        return self.root / "hub"

    @property
    def repo_dir(self) -> Path:
        return self.hub_dir / ("models--" + self.repo_id.replace("/", "--"))

    @property
    def refs_dir(self) -> Path:
        return self.repo_dir / "refs"

    @property
    def snapshots_dir(self) -> Path:
        return self.repo_dir / "snapshots"

    @property
    def blobs_dir(self) -> Path:
        return self.repo_dir / "blobs"

    @property
    def meta_dir(self) -> Path:
        return self.repo_dir / ".gnosis"

    @property
    def manifests_dir(self) -> Path:
        return self.meta_dir / "manifests"

    @property
    def lease_path(self) -> Path:
        return self.meta_dir / "lease.json"

    def ref_path(self, ref: str) -> Path:
        # refs may contain '/', e.g. refs/pr/1; reject anything that would climb out.
        return self.refs_dir / safe_relpath(ref)

    def snapshot_dir(self, commit: str) -> Path:
        if not is_commit(commit):
            raise ConfigError(f"{commit!r} is not a 40-character commit sha.")
        return self.snapshots_dir / commit

    def manifest_path(self, commit: str) -> Path:
        if not is_commit(commit):
            raise ConfigError(f"{commit!r} is not a 40-character commit sha.")
        return self.manifests_dir / f"{commit}.json"

    def file_path(self, commit: str, relpath: str) -> Path:
        return self.snapshot_dir(commit) / safe_relpath(relpath)


def repo_layout(root: Path, repo_id: str) -> RepoLayout:
    return RepoLayout(root=root, repo_id=validate_repo_id(repo_id))


def is_temp_name(name: str) -> bool:
    return TEMP_MARKER in name
