"""Native failures inside the tesseract engine's worker processes, for tests (tests/engines/test_tesseract.py).

The production worker has no fault switch. A test that wants a worker to abort, segfault, exit or hang on one page
starts the engine with ``worker_env(fault)`` in its environment: ``tests/support/tesseract_site/sitecustomize.py``
is then imported by every Python process started with that environment (the workers are fresh interpreters, see
gnosis_ocr/isolation.py), and it wraps ``tesserocr.PyTessBaseAPI``, the lowest seam: a page whose top-left pixels are
``MARKER_PIXELS`` makes ``SetImage`` fail that way in that worker. Other pages reach tesserocr untouched.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from PIL import Image

FAULT_ENV = "GNOSIS_TEST_TESSERACT_FAULT"
FAULTS = ("abort", "segv", "hang", "exit")
MARKER_PIXELS: tuple[tuple[int, int, int], ...] = ((222, 173, 190), (239, 11, 173), (192, 255, 238), (94, 237, 1))
SITE = Path(__file__).resolve().parent / "tesseract_site"
ROOT = Path(__file__).resolve().parents[2]


def worker_env(fault: str) -> dict[str, str]:
    """Environment variables that make the workers of an engine started afterwards fail on marked pages."""
    if fault not in FAULTS:
        raise ValueError(f"{fault!r} is not one of {', '.join(FAULTS)}")
    path = [str(SITE), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {FAULT_ENV: fault, "PYTHONPATH": os.pathsep.join(path)}


def marked(image: Image.Image) -> Image.Image:
    """A copy of ``image`` carrying the marker in its top row."""
    copy = image.convert("RGB")
    for x, pixel in enumerate(MARKER_PIXELS):
        copy.putpixel((x, 0), pixel)
    return copy


def _is_marked(image: Image.Image) -> bool:
    if image.width < len(MARKER_PIXELS):
        return False
    top = image.convert("RGB").crop((0, 0, len(MARKER_PIXELS), 1))
    return tuple(top.getdata()) == MARKER_PIXELS


def _fail(fault: str) -> None:
    if fault == "abort":
        os.abort()
    if fault == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if fault == "exit":
        os._exit(3)
    while fault == "hang":
        time.sleep(3600)


def install(fault: str) -> None:
    """Wrap tesserocr's API in this process (called by the sitecustomize, in a worker)."""
    import tesserocr

    real = tesserocr.PyTessBaseAPI

    class FaultyApi:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._api = real(*args, **kwargs)

        def SetImage(self, image: Image.Image) -> None:
            if _is_marked(image):
                _fail(fault)
            self._api.SetImage(image)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._api, name)

    tesserocr.PyTessBaseAPI = FaultyApi
