"""What the rest of the pipeline sees of a document: page images with an optional text layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple

if TYPE_CHECKING:
    from PIL import Image

Kind = Literal["pdf", "png", "jpeg", "tiff", "webp"]


@dataclass(frozen=True)
class DocumentLimits:
    """Guards against bombs and runaway work; all configurable (GNOSIS_MAX_* settings)."""

    max_bytes: int = 200 * 1024 * 1024
    max_pages: int = 500
    max_page_pixels: int = 40_000_000  # a decoded page image above this is refused (pixel bomb)
    max_total_pixels: int = 2_000_000_000
    target_pixels: int = 2_400_000  # pages are rendered to about this many pixels (~A4 at 180 dpi)
    min_long_side: int = 1024  # tiny pages are scaled up to at least this long side
    # Where pages are opened and rendered (``documents.isolated``): in worker processes, each page bounded by
    # address space and wall-clock time, so a runaway page costs only itself. 0 workers: in this process, unbounded.
    render_workers: int = 4
    render_memory_bytes: int = 2048 * 1024 * 1024
    render_timeout: float = 60.0


class WordBox(NamedTuple):
    """One word and where it is on the page image: pixels, origin top left. ``line`` counts the page's text lines in
    reading order (words of one line share it). Engines that find words (tesseract) and PDF text layers give them;
    the searchable PDF places its invisible text by them."""

    left: int
    top: int
    right: int
    bottom: int
    text: str
    line: int


@dataclass(frozen=True)
class Page:
    """One rendered page. ``number`` is 1-based, as users count pages."""

    number: int
    image: Image.Image  # RGB
    text_layer: str | None = None  # born-digital PDF text, None when the page has none (or is not a PDF)
    source_size: tuple[float, float] | None = None  # PDF points (w, h) or image pixels before scaling
    scale: float = 1.0  # rendered pixels per source unit
    points: tuple[float, float] | None = None  # the page's size in PDF points (PDF pages; None for images)
    text_layer_boxes: tuple[WordBox, ...] = ()  # the text layer's words on ``image`` (PDF pages with a text layer)


@dataclass(frozen=True)
class PageError:
    """A page that could not be rendered; the rest of the document goes on."""

    number: int
    message: str
