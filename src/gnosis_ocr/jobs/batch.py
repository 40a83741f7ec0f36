"""Batch OCR of a collection: documents under SRC to results under DST, one shard per task, resumable.

SRC and DST are local folders or object-store prefixes (``gs://bucket/prefix``, ``s3://bucket/prefix``, anything
fsspec knows). One run of one task:

1. lists SRC once: every file whose name ends in a supported extension (case-insensitive) is a document, named by
   its path relative to SRC (``a/b/scan.pdf``);
2. keeps its shard: document ``p`` belongs to task ``shard_of(p, count)`` (sha256 of the UTF-8 relative path, its
   first 8 bytes as a big-endian integer, modulo count). The owner of a document depends on its name alone, so
   adding or removing documents never moves the others; a different task count reassigns documents, and the
   done check below keeps that from redoing any work;
3. lists DST once: a document whose ``DST/<p>.json`` exists is done and skipped without being read (``force``
   redoes the shard);
4. reads each other document, in sorted order (an object store's into a local temp file), OCRs it with the one
   engine of this task, and writes ``DST/<p>.md`` and then ``DST/<p>.json``.

Each result is written whole: one PUT per object on an object store, a temp file renamed into place on local disk.
The JSON goes last, so its presence means done: a task killed midway leaves at most one ``.md`` without its
``.json``, and the rerun redoes exactly that document. A document that cannot be read is recorded as failed,
nothing is written for it and the next run tries it again; a document with failed pages is written (its JSON says
which pages failed and why) and counts as done.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from gnosis_ocr.documents.pages import parse_page_selection
from gnosis_ocr.engines.base import Engine, StreamingEngine
from gnosis_ocr.errors import ConfigError, DocumentError, DocumentLimitError, GnosisError, OutputWriteError
from gnosis_ocr.jobs.pipeline import OcrOptions, PipelineProgress, ocr_document
from gnosis_ocr.jobs.results import DocumentResult
from gnosis_ocr.modelcache.fsutil import atomic_write_bytes

logger = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".pdf", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")
RESULT_SUFFIXES = (".md", ".json")  # written in this order; the last one marks the document done
DONE_SUFFIX = RESULT_SUFFIXES[-1]
_ANY_PAGE_COUNT = 100_000  # checks a page selection's syntax before any document is open

_SHARD_HINT = (
    "A Cloud Run Job sets CLOUD_RUN_TASK_INDEX and CLOUD_RUN_TASK_COUNT; a Kubernetes Indexed Job sets "
    "JOB_COMPLETION_INDEX and needs --task-count (its .spec.completions); by hand pass --task-index and --task-count."
)


# ------------------------------------------------------------------------------------------------------ shards


def shard_of(path: str, count: int) -> int:
    """The task (0-based) among ``count`` that owns the document at relative path ``path``."""
    digest = hashlib.sha256(path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError(f"The task count is {self.count}; it must be at least 1.", hint=_SHARD_HINT)
        if not 0 <= self.index < self.count:
            raise ConfigError(
                f"Task index {self.index} is not below the task count {self.count} (indexes run 0 to "
                f"{self.count - 1}).",
                hint=_SHARD_HINT,
            )

    def owns(self, path: str) -> bool:
        return self.count == 1 or shard_of(path, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def resolve_shard(env: Mapping[str, str], *, index: int | None = None, count: int | None = None) -> Shard:
    """This task's shard: ``index``/``count`` where given, else CLOUD_RUN_TASK_INDEX/CLOUD_RUN_TASK_COUNT, else
    JOB_COMPLETION_INDEX (count from ``count``); with none of them, the one shard of a single task."""
    index_from = "--task-index"
    if index is None:
        for var in ("CLOUD_RUN_TASK_INDEX", "JOB_COMPLETION_INDEX"):
            if env.get(var, "").strip():
                index, index_from = _env_int(env, var), var
                break
    count_from = "--task-count"
    if count is None and env.get("CLOUD_RUN_TASK_COUNT", "").strip():
        count, count_from = _env_int(env, "CLOUD_RUN_TASK_COUNT"), "CLOUD_RUN_TASK_COUNT"
    if index is None and count is None:
        return Shard()
    if count is None:
        given = "--task-index" if index_from == "--task-index" else f"{index_from}={index}"
        raise ConfigError(f"{given} is set but the task count is not, so the shard is unknown.", hint=_SHARD_HINT)
    if index is None:
        if count == 1:
            return Shard()
        raise ConfigError(f"The task count is {count} ({count_from}) but no task index is set.", hint=_SHARD_HINT)
    return Shard(index, count)


def _env_int(env: Mapping[str, str], var: str) -> int:
    raw = env[var].strip()
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a whole number.", hint=_SHARD_HINT) from None


# ------------------------------------------------------------------------------------------------------- trees


class Tree(Protocol):
    """A folder of documents or results, addressed by relative POSIX paths."""

    url: str

    def files(self) -> dict[str, int]:
        """Every file below, relative path -> size. FileNotFoundError when the folder (or bucket) is not there."""
        ...

    def write(self, path: str, data: bytes) -> None:
        """Create or replace ``path`` whole: readers see the old content or the new, never a part."""

    def local_copy(self, path: str, folder: Path) -> contextlib.AbstractContextManager[Path]:
        """``path`` as a local file for as long as the context lasts (a temp copy in ``folder`` if remote)."""
        ...


class LocalTree:
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().absolute()
        self.url = str(self.root)

    def files(self) -> dict[str, int]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root} is not a folder")
        # rglob does not follow symlinked folders (no cycles); symlinked files are read as files
        return {p.relative_to(self.root).as_posix(): p.stat().st_size for p in self.root.rglob("*") if p.is_file()}

    def write(self, path: str, data: bytes) -> None:
        atomic_write_bytes(self.root / path, data, cache=False)

    @contextlib.contextmanager
    def local_copy(self, path: str, folder: Path) -> Iterator[Path]:
        yield self.root / path


class RemoteTree:
    def __init__(self, url: str, fs: Any, root: str) -> None:
        self.url = url
        self._fs = fs
        self._root = root

    def _path(self, path: str) -> str:
        return f"{self._root}/{path}"

    def files(self) -> dict[str, int]:
        found = self._fs.find(self._root, detail=True)  # FileNotFoundError for a missing bucket
        prefix = self._root + "/"
        return {
            name[len(prefix) :]: int(info.get("size") or 0)
            for name, info in found.items()
            if name.startswith(prefix) and info.get("type", "file") == "file" and not name.endswith("/")
        }

    def write(self, path: str, data: bytes) -> None:
        self._fs.pipe_file(self._path(path), data)  # one PUT of the whole content (results are far below 50 MiB)

    @contextlib.contextmanager
    def local_copy(self, path: str, folder: Path) -> Iterator[Path]:
        # under its own name, so that messages about the document name it as they would on disk
        with tempfile.TemporaryDirectory(dir=folder) as private:
            local = Path(private) / Path(path).name
            self._fs.get_file(self._path(path), str(local))
            yield local


def open_tree(url: str, storage_options: Mapping[str, Any] | None = None) -> Tree:
    """A local folder for a path (or ``file://``), else the fsspec filesystem of the URL's protocol."""
    if "://" not in url or url.startswith("file://"):
        return LocalTree(Path(url.removeprefix("file://")))
    import fsspec

    from gnosis_ocr.modelcache.push import split_url

    protocol, root = split_url(url)
    try:
        fs = fsspec.filesystem(protocol, **dict(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise ConfigError(
            f"No filesystem for {protocol}://: {exc}",
            hint="Install the extra: pip install 'gnosis-ocr[gcs]' or 'gnosis-ocr[s3]'.",
        ) from exc
    return RemoteTree(f"{protocol}://{root}", fs, root)


# ---------------------------------------------------------------------------------------------------- planning


def is_document(path: str) -> bool:
    return path.lower().endswith(SUPPORTED_SUFFIXES)


def result_paths(path: str) -> tuple[str, ...]:
    """Where the results of the document at ``path`` go, relative to DST, in writing order."""
    return tuple(path + suffix for suffix in RESULT_SUFFIXES)


@dataclass(frozen=True)
class SourceDocument:
    path: str  # relative to SRC, POSIX separators
    size: int


@dataclass(frozen=True)
class BatchPlan:
    shard: Shard
    total: int  # documents under SRC, all shards
    todo: tuple[SourceDocument, ...]
    skipped: tuple[str, ...]  # this shard's documents already done
    listing_seconds: float = 0.0


def plan_batch(sources: Mapping[str, int], results: Iterable[str], shard: Shard, *, force: bool = False) -> BatchPlan:
    """Which of the documents in ``sources`` (relative path -> size) this task reads, given the files already
    under DST (``results``, relative paths)."""
    documents = sorted(p for p in sources if is_document(p))
    done = set() if force else {r.removesuffix(DONE_SUFFIX) for r in results if r.endswith(DONE_SUFFIX)}
    mine = [p for p in documents if shard.owns(p)]
    return BatchPlan(
        shard,
        len(documents),
        tuple(SourceDocument(p, sources[p]) for p in mine if p not in done),
        tuple(p for p in mine if p in done),
    )


# ----------------------------------------------------------------------------------------------------- outcome


@dataclass(frozen=True)
class DocumentOutcome:
    path: str
    pages: int = 0  # pages read (ok or failed)
    failed_pages: tuple[tuple[int, str], ...] = ()  # (page number, error)
    error: str | None = None  # the document could not be read; nothing was written
    seconds: float = 0.0

    @property
    def written(self) -> bool:
        return self.error is None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failed_pages


@dataclass(frozen=True)
class BatchReport:
    shard: Shard
    source: str
    destination: str
    total: int
    skipped: tuple[str, ...]
    outcomes: tuple[DocumentOutcome, ...]
    seconds: float

    @property
    def documents(self) -> int:
        """This shard's documents."""
        return len(self.skipped) + len(self.outcomes)

    @property
    def done(self) -> int:
        return sum(1 for o in self.outcomes if o.written)

    @property
    def failed(self) -> int:
        return sum(1 for o in self.outcomes if not o.written)

    @property
    def pages(self) -> int:
        return sum(o.pages for o in self.outcomes)

    @property
    def failed_pages(self) -> int:
        return sum(len(o.failed_pages) for o in self.outcomes)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes)

    def summary(self) -> str:
        failed_pages = f" ({self.failed_pages} failed)" if self.failed_pages else ""
        return (
            f"batch: task {self.shard}: {self.documents} documents: {self.done} done, {len(self.skipped)} skipped "
            f"(already done), {self.failed} failed, {self.pages} pages{failed_pages} in {self.seconds:.1f} s"
        )

    def errors(self) -> list[tuple[str, int | None, str]]:
        """(document, page or None for the whole document, error) in processing order."""
        out: list[tuple[str, int | None, str]] = []
        for outcome in self.outcomes:
            if outcome.error is not None:
                out.append((outcome.path, None, outcome.error))
            out.extend((outcome.path, number, error) for number, error in outcome.failed_pages)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_index": self.shard.index,
            "task_count": self.shard.count,
            "source": self.source,
            "destination": self.destination,
            "documents_total": self.total,
            "documents": self.documents,
            "done": self.done,
            "skipped": len(self.skipped),
            "failed": self.failed,
            "pages": self.pages,
            "failed_pages": self.failed_pages,
            "seconds": round(self.seconds, 3),
            "errors": [{"document": d, "page": p, "error": e} for d, p, e in self.errors()],
        }


def write_error_report(tree: Tree, report: BatchReport) -> str:
    """The report as ``task-<index>-of-<count>.json`` in ``tree``; returns its relative name."""
    name = f"task-{report.shard.index}-of-{report.shard.count}.json"
    _write(tree, name, (json.dumps(report.to_dict(), indent=1, ensure_ascii=False) + "\n").encode())
    return name


# --------------------------------------------------------------------------------------------------------- run


class BatchProgress(PipelineProgress, Protocol):
    def batch_planned(self, plan: BatchPlan) -> None: ...

    def document_finished(self, outcome: DocumentOutcome) -> None: ...


class _NoProgress:
    def batch_planned(self, plan: BatchPlan) -> None:
        pass

    def document_started(self, name: str, pages: int) -> None:
        pass

    def page_done(self, name: str, page: object) -> None:
        pass

    def document_finished(self, outcome: DocumentOutcome) -> None:
        pass


def _list_source(source: Tree) -> dict[str, int]:
    """SRC's files; ConfigError when SRC is missing, unreadable, or holds no document at all."""
    try:
        files = source.files()
    except FileNotFoundError:
        raise ConfigError(
            f"SRC {source.url} does not exist or is not a folder.", hint="Check the path or URL."
        ) from None
    except Exception as exc:
        raise ConfigError(
            f"Cannot list SRC {source.url}: {type(exc).__name__}: {exc}",
            hint="Check the URL and the credentials (GOOGLE_APPLICATION_CREDENTIALS, AWS_* variables).",
        ) from exc
    if not any(is_document(p) for p in files):
        raise ConfigError(
            f"SRC {source.url} holds no document ({len(files)} file(s), none ending in "
            f"{', '.join(SUPPORTED_SUFFIXES)}).",
            hint="Point SRC at the folder or prefix of the collection.",
        )
    return files


def check_options(options: OcrOptions) -> None:
    """ConfigError for options no document can be read with (a page selection that cannot be parsed)."""
    if options.pages is not None:
        parse_page_selection(options.pages, _ANY_PAGE_COUNT)


def list_batch(source: Tree, destination: Tree, shard: Shard, *, force: bool = False) -> BatchPlan:
    """List SRC and DST once each and plan this task's run. ConfigError when SRC is missing, unreadable or holds
    no document, or when DST cannot be listed."""
    started = time.monotonic()
    files = _list_source(source)
    try:
        results = destination.files()
    except FileNotFoundError:
        results = {}  # created by the first write
    except Exception as exc:
        raise ConfigError(
            f"Cannot list DST {destination.url}: {type(exc).__name__}: {exc}",
            hint="Check the URL and the credentials (GOOGLE_APPLICATION_CREDENTIALS, AWS_* variables).",
        ) from exc
    plan = plan_batch(files, results, shard, force=force)
    logger.info(
        "batch task %s: %d of %d document(s) in this shard, %d already done, %d to do",
        shard,
        len(plan.todo) + len(plan.skipped),
        plan.total,
        len(plan.skipped),
        len(plan.todo),
    )
    return replace(plan, listing_seconds=time.monotonic() - started)


def run_batch(
    plan: BatchPlan,
    source: Tree,
    destination: Tree,
    engine: Engine | StreamingEngine | None,
    *,
    options: OcrOptions | None = None,
    progress: BatchProgress | None = None,
) -> BatchReport:
    """Read the documents of ``plan`` in order and write their results (``engine`` may be None when there is
    nothing to do). What would fail every document stops the run: an EngineError or a cache error, a failed write
    to DST (OutputWriteError). Anything else wrong with one document is that document's outcome, and the others
    go on."""
    options = options or OcrOptions()
    progress = progress or _NoProgress()
    started = time.monotonic()
    progress.batch_planned(plan)
    outcomes: list[DocumentOutcome] = []
    if plan.todo:
        if engine is None:
            raise ValueError(f"an engine is needed for the {len(plan.todo)} document(s) to do")
        with tempfile.TemporaryDirectory(prefix="gnosis-batch-") as scratch:
            for document in plan.todo:
                outcome, result = _read(
                    source, document, engine, options=options, progress=progress, scratch=Path(scratch)
                )
                if result is not None:
                    _write_results(destination, document.path, result)
                outcomes.append(outcome)
                progress.document_finished(outcome)
    seconds = plan.listing_seconds + time.monotonic() - started
    return BatchReport(plan.shard, source.url, destination.url, plan.total, plan.skipped, tuple(outcomes), seconds)


def _read(
    source: Tree,
    document: SourceDocument,
    engine: Engine | StreamingEngine,
    *,
    options: OcrOptions,
    progress: PipelineProgress,
    scratch: Path,
) -> tuple[DocumentOutcome, DocumentResult | None]:
    started = time.monotonic()
    try:
        if document.size > options.limits.max_bytes:  # refused before it is downloaded
            raise DocumentLimitError(
                f"{document.path} is {document.size / 2**20:,.1f} MiB, over the limit of "
                f"{options.limits.max_bytes / 2**20:,.1f} MiB (GNOSIS_MAX_BYTES).",
                hint="Raise GNOSIS_MAX_BYTES if documents this large are expected.",
            )
        with source.local_copy(document.path, scratch) as local:
            result = ocr_document(local, engine, name=document.path, options=options, progress=progress)
    except (DocumentError, ConfigError) as exc:  # unreadable, over a limit, a page selection past its end
        logger.info("batch: %s failed: %s", document.path, exc.message)
        return DocumentOutcome(document.path, error=exc.message, seconds=time.monotonic() - started), None
    except GnosisError:
        raise  # the engine, the model cache or the network guard: every other document would fail the same way
    except Exception as exc:  # one document's surprise (a source read, a renderer bug) must not stop the batch
        logger.error("batch: %s failed", document.path, exc_info=True)
        error = f"{type(exc).__name__}: {exc}"
        return DocumentOutcome(document.path, error=error, seconds=time.monotonic() - started), None
    failed = tuple((p.number, p.error or "") for p in result.pages if not p.ok)
    return DocumentOutcome(document.path, len(result.pages), failed, None, time.monotonic() - started), result


def _write_results(destination: Tree, path: str, result: DocumentResult) -> None:
    markdown_path, json_path = result_paths(path)
    payload = (json.dumps(result.to_dict(), indent=1, ensure_ascii=False) + "\n").encode()
    _write(destination, markdown_path, result.markdown().encode())
    _write(destination, json_path, payload)


def _write(tree: Tree, name: str, data: bytes) -> None:
    try:
        tree.write(name, data)
    except Exception as exc:
        raise OutputWriteError(
            f"Cannot write {tree.url}/{name}: {type(exc).__name__}: {exc}",
            hint="Check that the folder is writable with these credentials; a rerun skips every document already "
            "written and resumes there.",
        ) from exc
