"""The part of the tesseract engine that runs inside a worker process: one tesserocr API, pages in, text out.

Nothing here runs in the parent process except the dataclasses (they travel through the pipe). ``start_worker`` is
the worker's entry: it fixes the process environment, imports tesserocr (which loads libtesseract) and builds a
``PageReader`` that keeps one ``PyTessBaseAPI`` for the life of the process.

Orientation, cheaply. Most pages are upright, so a page is read once with plain automatic segmentation (no OSD,
which costs ~0.7 s a page at 2.4 MP). Only when that first reading does not look like upright text (no words, a low
mean confidence, or text lines taller than wide, which is how tesseract sees a page turned by 90 degrees) does the
reader ask OSD for the orientation, turn the image and read it again, keeping whichever reading tesseract is more
confident in. A 180 degree page reads as garbage at ~30 confidence; an upright one at ~90.

Skew, before that. A page scanned a few degrees askew can read as nothing at all (2 degrees and a soft scan did), so
every page's skew is estimated first (``estimate_skew``, ~15 ms a 2.4 MP page: a projection profile of the ink over
candidate angles) and a page whose text lines clearly lean by ``DESKEW_MIN_DEGREES`` or more is turned straight
before the first reading (``deskew``). An upright page is left exactly as it came. Small turns commute with the
quarter turns of orientation, and the estimate looks along both axes, so a page both turned and askew is
straightened first and then turned upright as any other.

tesserocr pitfall: an iterator from ``GetIterator`` points into the API's current results. Using (or merely
destroying) it after the next ``SetImage`` or ``Clear`` is a use-after-free that segfaults, so iterators here never
outlive the function that made them.
"""

from __future__ import annotations

import importlib
import math
import os
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol, TypedDict

from gnosis_ocr.documents.model import WordBox

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray
    from PIL import Image

# Orientation policy, tuned on rendered pages (see the module docstring).
UPRIGHT_MIN_CONFIDENCE = 70.0  # mean word confidence above which a first reading is taken as upright
MIN_OSD_CONFIDENCE = 2.0  # OSD's orient_conf below this is a guess, not a finding

# Deskew policy, tuned on rendered and scan-like pages (see ``deskew`` and ``estimate_skew``).
DESKEW_MIN_DEGREES = 0.3  # lines turned less than this read as well unturned, and resampling would cost a little
SKEW_MAX_DEGREES = 6.0  # the estimate searches -6..6 degrees; a best angle at the edge is not a peak
SKEW_MIN_CONTRAST = 4.0  # text lines score 12-80 at their angle over the median angle; noise and photos 1.1-1.7
_SKEW_WORK_PIXELS = 600_000  # the estimate works on the page reduced by a whole factor to about this size
_SKEW_MAX_POINTS = 60_000  # ink pixels used at most (an evenly strided subset beyond that)
_SKEW_MIN_POINTS = 200  # fewer ink pixels than this is a blank page
_SKEW_MIN_INK_CONTRAST = 48.0  # grey levels between ink and paper below which there is no ink, only paper grain
_COARSE_STEP, _FINE_STEP = 0.5, 0.05  # degrees


@dataclass(frozen=True)
class WorkerConfig:
    tessdata: str  # folder holding <lang>.traineddata and osd.traineddata
    languages: str  # tesseract syntax: "eng", "eng+deu"
    psm: int  # page segmentation mode for reading (3, automatic, by default)
    oem: int  # OCR engine mode (3, default: LSTM where the model has it)
    detect_orientation: bool
    deskew: bool = True  # estimate every page's skew and straighten pages askew by DESKEW_MIN_DEGREES or more


@dataclass(frozen=True)
class PageTask:
    number: int
    mode: str  # "RGB" or "L"
    size: tuple[int, int]
    pixels: bytes


@dataclass(frozen=True)
class PageReading:
    markdown: str
    rotation: int  # degrees the page image was turned clockwise before the reading kept: 0, 90, 180 or 270
    confidence: float | None  # mean word confidence, 0-100; None without words
    words: int
    orientation_confidence: float | None = None  # OSD's margin for the orientation, when OSD ran
    deskew_degrees: float | None = None  # degrees the page was turned clockwise to straighten it; None: not estimated
    seconds: float = 0.0  # time spent inside the worker
    word_boxes: tuple[WordBox, ...] = ()  # the words on the page image as it came (before deskew and turning)


class _Orientation(TypedDict):
    """What tesserocr's DetectOrientationScript answers."""

    orient_deg: int  # how far the text is turned (counter-clockwise turns of the image set it upright)
    orient_conf: float  # margin over the next best orientation
    script_name: str
    script_conf: float


class _Iterator(Protocol):
    """The parts of tesserocr's PyResultIterator used here."""

    def Empty(self, level: int) -> bool: ...
    def Next(self, level: int) -> bool: ...
    def GetUTF8Text(self, level: int) -> str: ...
    def Confidence(self, level: int) -> float: ...
    def BoundingBox(self, level: int) -> tuple[int, int, int, int] | None: ...
    def IsAtBeginningOf(self, level: int) -> bool: ...


class _Api(Protocol):
    """The parts of tesserocr's PyTessBaseAPI used here (tesserocr ships no typing marker)."""

    def SetImage(self, image: Image.Image) -> None: ...
    def Recognize(self, timeout: int = 0) -> bool: ...
    def GetIterator(self) -> _Iterator | None: ...
    def DetectOrientationScript(self) -> _Orientation | None: ...
    def Clear(self) -> None: ...
    def End(self) -> None: ...


# tesserocr.RIL levels, fixed by the tesseract API.
_BLOCK, _PARA, _TEXTLINE, _WORD = 0, 1, 2, 3


def start_worker(config: WorkerConfig) -> PageReader:
    """Worker process entry (the pool's handler factory): set the environment, load tesseract, build the reader."""
    # tesseract built with OpenMP would start a thread team per process and oversubscribe the cores we already
    # fill with processes. (The tesserocr 2.13 wheels link no OpenMP, so today this is only a guard.)
    os.environ["OMP_THREAD_LIMIT"] = "1"
    tesserocr = importlib.import_module("tesserocr")
    api: _Api = tesserocr.PyTessBaseAPI(
        path=config.tessdata.rstrip("/") + "/", lang=config.languages, psm=config.psm, oem=config.oem
    )
    return PageReader(api, config)


class PageReader:
    """Reads one page at a time with one tesserocr API (the handler the pool calls in the worker)."""

    def __init__(self, api: _Api, config: WorkerConfig) -> None:
        self._api = api
        self._config = config

    def __call__(self, task: PageTask) -> PageReading:
        started = time.perf_counter()
        from PIL import Image

        image = Image.frombytes(task.mode, task.size, task.pixels)
        turned: float | None = None
        if self._config.deskew:
            image, turned = deskew(image)
        try:
            reading = self._read_oriented(image)
        finally:
            self._api.Clear()
        boxes = _boxes_on_page(reading.word_boxes, reading.rotation, image.size, turned or 0.0, task.size)
        return replace(reading, deskew_degrees=turned, seconds=time.perf_counter() - started, word_boxes=boxes)

    def _read_oriented(self, image: Image.Image) -> PageReading:
        first, tall_lines = self._read(image)
        if not self._config.detect_orientation or (
            first.words > 0 and (first.confidence or 0.0) >= UPRIGHT_MIN_CONFIDENCE and not tall_lines
        ):
            return first
        found = self._api.DetectOrientationScript()  # on the image still set: the unturned page
        if not found:
            return first
        degrees, margin = found["orient_deg"], found["orient_conf"]
        if degrees % 360 == 0 or margin < MIN_OSD_CONFIDENCE:
            return _with_orientation(first, 0, margin)
        # orient_deg is how far the text is turned; PIL turns counter-clockwise, so this sets it upright.
        second, _ = self._read(image.rotate(degrees, expand=True))
        if _score(second) >= _score(first):
            return _with_orientation(second, (360 - degrees) % 360, margin)
        return _with_orientation(first, 0, margin)

    def _read(self, image: Image.Image) -> tuple[PageReading, bool]:
        """Recognise ``image``; answer the reading and whether most text lines stand taller than wide."""
        self._api.SetImage(image)
        self._api.Recognize()
        paragraphs = _paragraphs(self._api.GetIterator())
        confidences = _word_confidences(self._api.GetIterator())
        tall, wide = _line_shapes(self._api.GetIterator())
        boxes = _words(self._api.GetIterator())
        confidence = round(sum(confidences) / len(confidences), 1) if confidences else None
        reading = PageReading("\n\n".join(paragraphs), 0, confidence, len(confidences), word_boxes=boxes)
        return reading, tall > wide


@dataclass(frozen=True)
class Skew:
    """What ``estimate_skew`` found."""

    degrees: float  # how far the text lines are turned counter-clockwise (PIL's positive sense); 0.0: no clear angle
    contrast: float  # profile sharpness at the best angle over the median angle's: ~1 where no angle stands out
    vertical: bool = False  # the lines run top to bottom (a page turned by a quarter)


def deskew(image: Image.Image) -> tuple[Image.Image, float]:
    """The deskew policy: the image to read, and how many degrees it was turned clockwise to straighten it.

    Every page is estimated (cheap next to a reading: ~15 ms against ~1 s), and only a page whose lines clearly lean
    by ``DESKEW_MIN_DEGREES`` or more is turned, in grey, resampled bicubically onto white paper. Anything else, an
    upright page, a blank one, a photograph, comes back as the very same image object, so it reads exactly as it
    did without deskewing.
    """
    from PIL import Image

    skew = estimate_skew(image)
    if abs(skew.degrees) < DESKEW_MIN_DEGREES:
        return image, 0.0
    straight = image.convert("L").rotate(-skew.degrees, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=255)
    return straight, round(skew.degrees, 2)


def estimate_skew(image: Image.Image) -> Skew:
    """How far the page's text lines lean, by the projection profile of its ink.

    The page is reduced to ~0.6 MP and binarised (Otsu). Its ink pixels are projected onto the axis across the
    lines for each candidate angle; at the lines' own angle the profile is a comb of sharp peaks (the lines) and
    gaps (the leading), elsewhere the peaks smear. Sharpness is the sum of squared differences between neighbouring
    profile bins. Angles every 0.5 degree over +-6, then every 0.05 around the best, then a parabola through the
    best three. Lines across the page are tried first; only when they show no clear angle are lines down the page
    tried (a page turned by a quarter). ``contrast`` below ``SKEW_MIN_CONTRAST`` or a best angle at the edge of
    the range means no angle found: ``degrees`` is then 0.0.
    """
    import numpy as np

    factor = max(1, round(math.sqrt(image.width * image.height / _SKEW_WORK_PIXELS)))
    small = (image.reduce(factor) if factor > 1 else image).convert("L")
    pixels = np.asarray(small)
    ink = _ink(pixels)
    if ink is None:
        return Skew(0.0, 1.0)
    rows, columns = np.nonzero(ink)
    if len(rows) < _SKEW_MIN_POINTS:
        return Skew(0.0, 1.0)
    stride = -(-len(rows) // _SKEW_MAX_POINTS)
    # Centred, so a turn about the middle keeps every projection within one profile of the page's diagonal.
    down = rows[::stride].astype(np.float32) - np.float32(pixels.shape[0] / 2)
    across = columns[::stride].astype(np.float32) - np.float32(pixels.shape[1] / 2)
    bins = math.ceil(math.hypot(*pixels.shape)) + 2
    coarse = np.arange(-SKEW_MAX_DEGREES, SKEW_MAX_DEGREES + _COARSE_STEP / 2, _COARSE_STEP)
    found = Skew(0.0, 1.0)
    # Lines across: a point's place across them is y cos(a) + x sin(a); lines down: x cos(a) - y sin(a).
    for vertical, (u, v) in ((False, (down, across)), (True, (across, -down))):
        scores = np.array([_sharpness(u, v, degrees, bins) for degrees in coarse])
        best = int(np.argmax(scores))
        contrast = round(float(scores[best] / max(float(np.median(scores)), 1.0)), 1)
        if contrast > found.contrast:
            found = Skew(0.0, contrast, vertical)
        if contrast < SKEW_MIN_CONTRAST:
            continue
        if best in (0, len(coarse) - 1):
            return found
        fine = np.arange(coarse[best] - _COARSE_STEP, coarse[best] + _COARSE_STEP + _FINE_STEP / 2, _FINE_STEP)
        return Skew(_peak(fine, np.array([_sharpness(u, v, d, bins) for d in fine])), contrast, vertical)
    return found


def _ink(pixels: NDArray[np.uint8]) -> NDArray[np.bool_] | None:
    """Dark pixels by Otsu's threshold; None when dark and light differ too little to be ink on paper."""
    import numpy as np

    counts = np.bincount(pixels.ravel(), minlength=256).astype(np.float64)
    below = np.cumsum(counts)  # pixels at or below each level
    mass = np.cumsum(counts * np.arange(256))
    total, total_mass = below[-1], mass[-1]
    above = total - below
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = (total_mass * below / total - mass) ** 2 / (below * above)
    spread[~np.isfinite(spread)] = 0.0
    level = int(np.argmax(spread))
    if below[level] == 0 or above[level] == 0:
        return None
    dark = mass[level] / below[level]
    light = (total_mass - mass[level]) / above[level]
    if light - dark < _SKEW_MIN_INK_CONTRAST:
        return None
    return pixels <= level


def _sharpness(across: NDArray[np.float32], along: NDArray[np.float32], degrees: float, bins: int) -> float:
    """Sum of squared differences between neighbouring bins of the ink's profile across lines at ``degrees``."""
    import numpy as np

    radians = math.radians(degrees)
    place = across * np.float32(math.cos(radians)) + along * np.float32(math.sin(radians)) + np.float32(bins / 2)
    profile = np.bincount(place.astype(np.intp), minlength=bins)
    steps = np.diff(profile)
    return float(steps @ steps)


def _peak(angles: NDArray[np.float64], scores: NDArray[np.float64]) -> float:
    """The best angle, refined by the parabola through it and its neighbours."""
    best = int(scores.argmax())
    degrees = float(angles[best])
    if 0 < best < len(scores) - 1:
        left, middle, right = (float(s) for s in scores[best - 1 : best + 2])
        curve = left - 2 * middle + right
        if curve < 0:
            degrees += 0.5 * (left - right) / curve * float(angles[1] - angles[0])
    return round(degrees, 3) or 0.0  # never -0.0


def _paragraphs(iterator: _Iterator | None) -> list[str]:
    """Paragraph texts in tesseract's reading order, lines kept, blank and whitespace-only ones dropped."""
    found: list[str] = []
    if iterator is None or iterator.Empty(_PARA):
        return found
    while True:
        lines = [line.rstrip() for line in iterator.GetUTF8Text(_PARA).splitlines()]
        text = "\n".join(line for line in lines if line.strip())
        if text:
            found.append(text)
        if not iterator.Next(_PARA):
            return found


def _word_confidences(iterator: _Iterator | None) -> list[float]:
    found: list[float] = []
    if iterator is None or iterator.Empty(_WORD):
        return found
    while True:
        if iterator.GetUTF8Text(_WORD).strip():
            found.append(iterator.Confidence(_WORD))
        if not iterator.Next(_WORD):
            return found


def _line_shapes(iterator: _Iterator | None) -> tuple[int, int]:
    """How many text lines are taller than wide, and how many wider than tall."""
    tall = wide = 0
    if iterator is None or iterator.Empty(_TEXTLINE):
        return tall, wide
    while True:
        box = iterator.BoundingBox(_TEXTLINE)
        if box is not None and iterator.GetUTF8Text(_TEXTLINE).strip():
            left, top, right, bottom = box
            if bottom - top > right - left:
                tall += 1
            else:
                wide += 1
        if not iterator.Next(_TEXTLINE):
            return tall, wide


def _words(iterator: _Iterator | None) -> tuple[WordBox, ...]:
    """Every word with its box on the image read, in reading order, numbered by text line."""
    found: list[WordBox] = []
    if iterator is None or iterator.Empty(_WORD):
        return ()
    line = -1
    while True:
        if iterator.IsAtBeginningOf(_TEXTLINE):
            line += 1
        text = iterator.GetUTF8Text(_WORD).strip()
        box = iterator.BoundingBox(_WORD)
        if text and box is not None:
            found.append(WordBox(*box, text, max(line, 0)))
        if not iterator.Next(_WORD):
            return tuple(found)


def _boxes_on_page(
    boxes: tuple[WordBox, ...], rotation: int, deskewed: tuple[int, int], turned: float, page: tuple[int, int]
) -> tuple[WordBox, ...]:
    """Word boxes found on the image read put back on the page image (size ``page``).

    The image read is the page deskewed (``rotate(-turned, expand=True)``, size ``deskewed``), then turned upright
    (``rotate(-rotation, expand=True)``). Each box's corners are turned back through both steps about the images'
    centres; the box around them, clipped to the page, is the word's box on the page."""
    if not boxes:
        return ()
    read = (deskewed[1], deskewed[0]) if rotation in (90, 270) else deskewed
    steps = [(float(-rotation), read, deskewed), (-turned, deskewed, page)]  # (PIL angle, its result, its source)
    steps = [step for step in steps if step[0] % 360 or step[1] != step[2]]
    placed: list[WordBox] = []
    for box in boxes:
        corners = [(float(x), float(y)) for x in (box.left, box.right) for y in (box.top, box.bottom)]
        for angle, result, source in steps:
            corners = [_unrotate(x, y, angle, result, source) for x, y in corners]
        xs, ys = [x for x, _ in corners], [y for _, y in corners]
        left, right = max(0, round(min(xs))), min(page[0], round(max(xs)))
        top, bottom = max(0, round(min(ys))), min(page[1], round(max(ys)))
        if right > left and bottom > top:
            placed.append(WordBox(left, top, right, bottom, box.text, box.line))
    return tuple(placed)


def _unrotate(
    x: float, y: float, angle: float, rotated: tuple[int, int], source: tuple[int, int]
) -> tuple[float, float]:
    """Where a point of ``image.rotate(angle, expand=True)`` (size ``rotated``) was on ``image`` (size ``source``):
    PIL turns counter-clockwise about the centre, and ``expand`` keeps the centre in the middle."""
    radians = math.radians(angle)
    cos, sin = math.cos(radians), math.sin(radians)
    ox, oy = x - rotated[0] / 2, y - rotated[1] / 2
    return ox * cos - oy * sin + source[0] / 2, ox * sin + oy * cos + source[1] / 2


def _score(reading: PageReading) -> float:
    """How much confident text a reading holds: garbage scores low however many 'words' it finds."""
    return (reading.confidence or 0.0) * reading.words


def _with_orientation(reading: PageReading, rotation: int, margin: float) -> PageReading:
    return replace(reading, rotation=rotation, orientation_confidence=round(margin, 1))
