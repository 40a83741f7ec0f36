"""The part of the tesseract engine that runs inside a worker process: one tesserocr API, pages in, text out.

Nothing here runs in the parent process except the dataclasses (they travel through the pipe). ``start_worker`` is
the worker's entry: it fixes the process environment, imports tesserocr (which loads libtesseract) and builds a
``PageReader`` that keeps one ``PyTessBaseAPI`` for the life of the process.

Orientation, cheaply. Most pages are upright, so a page is read once with plain automatic segmentation (no OSD,
which costs ~0.7 s a page at 2.4 MP). Only when that first reading does not look like upright text (no words, a low
mean confidence, or text lines taller than wide, which is how tesseract sees a page turned by 90 degrees) does the
reader ask OSD for the orientation, turn the image and read it again, keeping whichever reading tesseract is more
confident in. A 180 degree page reads as garbage at ~30 confidence; an upright one at ~90.

tesserocr pitfall: an iterator from ``GetIterator`` points into the API's current results. Using (or merely
destroying) it after the next ``SetImage`` or ``Clear`` is a use-after-free that segfaults, so iterators here never
outlive the function that made them.
"""

from __future__ import annotations

import importlib
import os
import signal
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol, TypedDict

if TYPE_CHECKING:
    from PIL import Image

# Test-only fault injection. When the worker process starts with GNOSIS_TEST_CRASH_MARKER set to one of FAULTS, a
# page whose first pixels (top row, left) are exactly CRASH_MARKER_PIXELS makes that worker fail natively in that
# way, as tesseract does on some noisy scans. The variable is read once, in ``start_worker`` inside the worker
# process, and nowhere else; without it the marker pixels are just pixels, so no document can trigger a fault in
# production. Tests use it to prove that a native crash or a hang costs one page and nothing more.
CRASH_MARKER_ENV = "GNOSIS_TEST_CRASH_MARKER"
CRASH_MARKER_PIXELS: tuple[tuple[int, int, int], ...] = ((222, 173, 190), (239, 11, 173), (192, 255, 238), (94, 237, 1))
FAULTS = ("abort", "segv", "hang", "exit")
_MARKER_BYTES = bytes(channel for pixel in CRASH_MARKER_PIXELS for channel in pixel)

# Orientation policy, tuned on rendered pages (see the module docstring).
UPRIGHT_MIN_CONFIDENCE = 70.0  # mean word confidence above which a first reading is taken as upright
MIN_OSD_CONFIDENCE = 2.0  # OSD's orient_conf below this is a guess, not a finding


@dataclass(frozen=True)
class WorkerConfig:
    tessdata: str  # folder holding <lang>.traineddata and osd.traineddata
    languages: str  # tesseract syntax: "eng", "eng+deu"
    psm: int  # page segmentation mode for reading (3, automatic, by default)
    oem: int  # OCR engine mode (3, default: LSTM where the model has it)
    detect_orientation: bool


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
    seconds: float = 0.0  # time spent inside the worker


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
    fault = os.environ.get(CRASH_MARKER_ENV) or None
    if fault is not None and fault not in FAULTS:
        raise ValueError(f"{CRASH_MARKER_ENV}={fault!r} is not one of {', '.join(FAULTS)}")
    tesserocr = importlib.import_module("tesserocr")
    api: _Api = tesserocr.PyTessBaseAPI(
        path=config.tessdata.rstrip("/") + "/", lang=config.languages, psm=config.psm, oem=config.oem
    )
    return PageReader(api, config, fault)


class PageReader:
    """Reads one page at a time with one tesserocr API (the handler the pool calls in the worker)."""

    def __init__(self, api: _Api, config: WorkerConfig, fault: str | None) -> None:
        self._api = api
        self._config = config
        self._fault = fault

    def __call__(self, task: PageTask) -> PageReading:
        started = time.perf_counter()
        if self._fault is not None and task.pixels.startswith(_MARKER_BYTES):
            _inject(self._fault)
        from PIL import Image

        image = Image.frombytes(task.mode, task.size, task.pixels)
        try:
            reading = self._read_oriented(image)
        finally:
            self._api.Clear()
        return replace(reading, seconds=time.perf_counter() - started)

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
        confidence = round(sum(confidences) / len(confidences), 1) if confidences else None
        reading = PageReading("\n\n".join(paragraphs), 0, confidence, len(confidences))
        return reading, tall > wide


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


def _score(reading: PageReading) -> float:
    """How much confident text a reading holds: garbage scores low however many 'words' it finds."""
    return (reading.confidence or 0.0) * reading.words


def _with_orientation(reading: PageReading, rotation: int, margin: float) -> PageReading:
    return replace(reading, rotation=rotation, orientation_confidence=round(margin, 1))


def _inject(fault: str) -> None:
    """Fail the way native code fails (see CRASH_MARKER_ENV)."""
    if fault == "abort":
        os.abort()
    if fault == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if fault == "exit":
        os._exit(3)
    while fault == "hang":
        time.sleep(3600)
