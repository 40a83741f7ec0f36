"""The part of the layout engine that runs inside a worker process: the layout model and tesseract, page in, blocks
out.

One page: straighten it (``tesseract_worker.deskew``), read it once with tesseract (words with their boxes,
paragraphs and lines), turn it upright and read it again where that reading does not look upright (the tesseract
engine's orientation policy), find the layout regions on the upright page with the layout model (``layout_model``,
ONNX on one thread), then ``layout_blocks.compose`` joins words and regions into blocks in reading order
and ``layout_tables.read_table`` reads each table's grid. Boxes are given back in the pixels of the page as it came
(the turns undone), so a caller can draw them on the page image it has.

One tesseract pass over the whole page, words then assigned to blocks, costs what the tesseract engine costs; a
pass per block crop would cost a ``SetImage`` and a layout analysis per block and loses tesseract's own view of the
page's lines (measured in ``bench/layout_quality.py``).
"""

from __future__ import annotations

import importlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gnosis_ocr.engines.layout_blocks import Block, Box, PageLayout, Word, compose
from gnosis_ocr.engines.layout_tables import read_table
from gnosis_ocr.engines.tesseract_worker import (
    MIN_OSD_CONFIDENCE,
    UPRIGHT_MIN_CONFIDENCE,
    PageTask,
    deskew,
)

if TYPE_CHECKING:
    from PIL import Image

    from gnosis_ocr.engines.layout_model import LayoutModel

_BLOCK, _PARA, _TEXTLINE, _WORD = 0, 1, 2, 3  # tesserocr.RIL levels
_PSM_AUTO, _PSM_BLOCK, _PSM_SINGLE_LINE = 3, 6, 7  # tesserocr.PSM values
_MARGIN = 12  # white pixels around a crop read on its own
_LINE_PIXELS = 30  # a line of body text at the ~180 dpi pages are rendered at


@dataclass(frozen=True)
class LayoutConfig:
    tessdata: str
    languages: str
    model_path: str  # the layout model's ONNX file
    oem: int = 3
    detect_orientation: bool = True
    deskew: bool = True
    min_score: float = 0.4  # layout regions scored below this are ignored
    keep_furniture: bool = False  # running headers, footers and page numbers stay in the Markdown


@dataclass(frozen=True)
class LayoutReading:
    markdown: str
    blocks: list[dict[str, Any]]  # body blocks in reading order, as meta["blocks"] carries them
    furniture: list[dict[str, Any]]  # headers, footers, page numbers
    rotation: int  # degrees turned clockwise before reading: 0, 90, 180, 270
    confidence: float | None  # mean word confidence 0-100
    words: int
    orientation_confidence: float | None = None
    deskew_degrees: float | None = None
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage: ocr, layout, compose
    # Every word on the page as (left, top, right, bottom, text, line) in the pixels of the page as it came.
    word_boxes: list[tuple[int, int, int, int, str, int]] = field(default_factory=list)


def start_worker(config: LayoutConfig) -> LayoutReader:
    """Worker process entry: one thread for each native library (the pool's processes fill the cores)."""
    os.environ["OMP_THREAD_LIMIT"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    tesserocr = importlib.import_module("tesserocr")
    api = tesserocr.PyTessBaseAPI(path=config.tessdata.rstrip("/") + "/", lang=config.languages, psm=3, oem=config.oem)
    from gnosis_ocr.engines.layout_model import LayoutModel

    model = LayoutModel(config.model_path, threads=1, min_score=config.min_score)
    return LayoutReader(api, model, config)


class LayoutReader:
    """Reads one page at a time (the handler the pool calls in the worker)."""

    def __init__(self, api: Any, model: LayoutModel, config: LayoutConfig) -> None:
        self._api = api
        self._model = model
        self._config = config

    def __call__(self, task: PageTask) -> LayoutReading:
        from PIL import Image

        started = time.perf_counter()
        original = Image.frombytes(task.mode, task.size, task.pixels)
        image, turned = deskew(original) if self._config.deskew else (original, None)
        turns: list[tuple[float, tuple[int, int], tuple[int, int]]] = []
        if turned:
            turns.append((-turned, original.size, image.size))
        import numpy as np

        try:
            clock = time.perf_counter()
            words, rotation, margin, image = self._read_oriented(image, turns)
            ocr_seconds = time.perf_counter() - clock
            clock = time.perf_counter()
            regions = self._model(image)
            layout_seconds = time.perf_counter() - clock
            clock = time.perf_counter()
            grey = np.asarray(image.convert("L"))
            upright = image
            layout = compose(
                regions,
                words,
                image.size,
                lambda box, ws: read_table(grey, box, ws),
                lambda box: self._crop_words(upright, box),
            )
        finally:
            self._api.Clear()
        confidences = [w.confidence for w in words]
        reading = LayoutReading(
            markdown=layout.markdown(keep_furniture=self._config.keep_furniture),
            blocks=[_as_meta(b, turns) for b in layout.body],
            furniture=[_as_meta(b, turns) for b in layout.furniture],
            rotation=rotation,
            confidence=round(sum(confidences) / len(confidences), 1) if confidences else None,
            words=len(words),
            word_boxes=_word_boxes(words, turns),
            orientation_confidence=margin,
            deskew_degrees=turned,
            timings={
                "ocr": round(ocr_seconds, 3),
                "layout": round(layout_seconds, 3),
                "compose": round(time.perf_counter() - clock, 3),
            },
        )
        return _with_seconds(reading, time.perf_counter() - started)

    def _read_oriented(
        self, image: Image.Image, turns: list[tuple[float, tuple[int, int], tuple[int, int]]]
    ) -> tuple[list[Word], int, float | None, Image.Image]:
        words, tall = self._read(image)
        confidence = _mean(words)
        if not self._config.detect_orientation or (words and confidence >= UPRIGHT_MIN_CONFIDENCE and not tall):
            return words, 0, None, image
        found = self._api.DetectOrientationScript()
        if not found:
            return words, 0, None, image
        degrees, margin = int(found["orient_deg"]), round(float(found["orient_conf"]), 1)
        if degrees % 360 == 0 or margin < MIN_OSD_CONFIDENCE:
            return words, 0, margin, image
        upright = image.rotate(degrees, expand=True)
        second, _ = self._read(upright)
        if _mean(second) * len(second) >= confidence * len(words):
            turns.append((float(degrees), image.size, upright.size))
            return second, (360 - degrees) % 360, margin, upright
        return words, 0, margin, image

    def _crop_words(self, image: Image.Image, box: Box) -> list[Word]:
        from PIL import Image

        """The words of one region read on its own (a region the page pass found nothing in), in page pixels:
        single-line segmentation for a line-high region, a uniform block otherwise."""
        pad = 6
        left, top = max(0, box[0] - pad), max(0, box[1] - pad)
        crop = image.crop((left, top, min(image.width, box[2] + pad), min(image.height, box[3] + pad)))
        # On white paper with a margin: tesseract reads a glyph touching the image's edge badly, or not at all.
        paper = Image.new(crop.mode, (crop.width + 2 * _MARGIN, crop.height + 2 * _MARGIN), "white")
        paper.paste(crop, (_MARGIN, _MARGIN))
        left, top = left - _MARGIN, top - _MARGIN
        crop = paper
        single = (box[3] - box[1]) < 2.2 * max(1, _LINE_PIXELS)
        self._api.SetPageSegMode(_PSM_SINGLE_LINE if single else _PSM_BLOCK)
        try:
            self._api.SetImage(crop)
            self._api.Recognize()
            found = _words(self._api.GetIterator())
        finally:
            self._api.SetPageSegMode(_PSM_AUTO)
        shift = 1_000_000  # line numbers of their own, apart from the page's
        return [
            Word(
                w.text,
                (w.box[0] + left, w.box[1] + top, w.box[2] + left, w.box[3] + top),
                w.confidence,
                w.paragraph + shift,
                w.line + shift,
            )
            for w in found
        ]

    def _read(self, image: Image.Image) -> tuple[list[Word], bool]:
        self._api.SetImage(image)
        self._api.Recognize()
        words = _words(self._api.GetIterator())
        lines: dict[int, list[Word]] = {}
        for word in words:
            lines.setdefault(word.line, []).append(word)
        tall = wide = 0
        for line in lines.values():
            x0, y0 = min(w.box[0] for w in line), min(w.box[1] for w in line)
            x1, y1 = max(w.box[2] for w in line), max(w.box[3] for w in line)
            if y1 - y0 > x1 - x0:
                tall += 1
            else:
                wide += 1
        return words, tall > wide


def _words(iterator: Any) -> list[Word]:
    """Every word with its box, confidence, and running paragraph and line numbers (the iterator dies here)."""
    found: list[Word] = []
    if iterator is None or iterator.Empty(_WORD):
        return found
    paragraph = line = -1
    while True:
        if iterator.IsAtBeginningOf(_BLOCK) or iterator.IsAtBeginningOf(_PARA):
            paragraph += 1
        if iterator.IsAtBeginningOf(_TEXTLINE):
            line += 1
        text = (iterator.GetUTF8Text(_WORD) or "").strip()
        box = iterator.BoundingBox(_WORD)
        if text and box is not None:
            found.append(Word(text, tuple(int(v) for v in box), float(iterator.Confidence(_WORD)), paragraph, line))  # type: ignore[arg-type]
        if not iterator.Next(_WORD):
            return found


def _word_boxes(
    words: list[Word], turns: list[tuple[float, tuple[int, int], tuple[int, int]]]
) -> list[tuple[int, int, int, int, str, int]]:
    """The words in tesseract's order, boxes in the page's own pixels, lines numbered from 0."""
    lines: dict[int, int] = {}
    found = []
    for word in sorted(words, key=lambda w: (w.line, w.box[0])):
        x0, y0, x1, y1 = untwist(word.box, turns)
        found.append((x0, y0, x1, y1, word.text, lines.setdefault(word.line, len(lines))))
    return found


def _mean(words: list[Word]) -> float:
    return sum(w.confidence for w in words) / len(words) if words else 0.0


def _with_seconds(reading: LayoutReading, seconds: float) -> LayoutReading:
    from dataclasses import replace

    return replace(reading, seconds=seconds)


def untwist(box: Box, turns: list[tuple[float, tuple[int, int], tuple[int, int]]]) -> Box:
    """A box in the turned image back in the pixels of the page as it came: each turn (PIL ``rotate(angle,
    expand=True)`` from ``before`` to ``after`` size) undone, last first; the box of the turned corners."""
    points = [(box[0], box[1]), (box[2], box[1]), (box[0], box[3]), (box[2], box[3])]
    fpoints = [(float(x), float(y)) for x, y in points]
    for angle, before, after in reversed(turns):
        radians = math.radians(angle)
        cos, sin = math.cos(radians), math.sin(radians)
        cx, cy = after[0] / 2, after[1] / 2
        bx, by = before[0] / 2, before[1] / 2
        # PIL turns counter-clockwise on screen: a point p of the original (about its centre) lands at
        # (x cos + y sin, -x sin + y cos); undo that.
        fpoints = [(bx + (x - cx) * cos - (y - cy) * sin, by + (x - cx) * sin + (y - cy) * cos) for x, y in fpoints]
    if not turns:
        return box
    xs, ys = [p[0] for p in fpoints], [p[1] for p in fpoints]
    return (round(min(xs)), round(min(ys)), round(max(xs)), round(max(ys)))


def _as_meta(block: Block, turns: list[tuple[float, tuple[int, int], tuple[int, int]]]) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "type": block.kind,
        "bbox": list(untwist(block.box, turns)),
        "text": block.text,
        "order": block.order,
        "confidence": block.confidence,
        "source": block.source,
    }
    if block.level:
        meta["level"] = block.level
    if block.cells:
        meta["cells"] = [list(row) for row in block.cells]
    return meta


__all__ = ["LayoutConfig", "LayoutReader", "LayoutReading", "PageLayout", "start_worker", "untwist"]
