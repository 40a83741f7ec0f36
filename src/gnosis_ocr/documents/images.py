"""Image documents through Pillow: PNG, JPEG, WebP (one page) and TIFF (one page per frame).

Every page's pixel count is checked from the header before a single pixel is decoded. Pillow's own bomb guard
(``Image.MAX_IMAGE_PIXELS``, an error past twice that) is left as it is, process-wide, as a second line: when it
fires first, it becomes the same ``DocumentLimitError``. So ``max_page_pixels`` above Pillow's ceiling (about 179
megapixels by default) does not let larger images through.
"""

from __future__ import annotations

import io
import logging
import struct
from pathlib import Path
from typing import BinaryIO, Final, cast

from PIL import Image, ImageOps, UnidentifiedImageError

from gnosis_ocr.documents.model import DocumentLimits, Kind, Page
from gnosis_ocr.documents.sizing import PagePlan, plan_page
from gnosis_ocr.errors import BrokenDocumentError, DocumentLimitError

logger = logging.getLogger(__name__)

_PILLOW_FORMAT: Final[dict[Kind, str]] = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "webp": "WEBP"}
_EXIF_ORIENTATION: Final = 0x0112
_SWAPS_SIDES: Final = frozenset({5, 6, 7, 8})  # orientations that turn the image a quarter
_WHITE: Final = (255, 255, 255)
_KEEP_SIZE: Final = 0.05  # an image within 5% of the planned size on both sides is kept, not resampled

_BOMB_HINT = (
    "If the image is genuine, scale it down first (e.g. `magick FILE -resize 50% smaller.png`) "
    "or raise GNOSIS_MAX_PAGE_PIXELS."
)


class ImagePages:
    """An open image file. TIFF frames are pages; other formats have one page (animation frames are ignored)."""

    def __init__(self, source: Path | bytes, kind: Kind, *, name: str, limits: DocumentLimits) -> None:
        self.name = name
        self._limits = limits
        self._image = _open(source, kind, name, limits)
        try:
            self.page_count: int = _tiff_frames(source, name, limits) if kind == "tiff" else 1
            self._check_pixels(1)  # refuse a single-image bomb at open, before anything is decoded
        except BaseException:
            self._image.close()
            raise

    def render(self, number: int, pixels_left: int) -> tuple[Page, int]:
        """Page ``number`` (1-based) as an upright RGB image at the target size, and the pixels it cost to decode.

        Raises ``DocumentLimitError`` before decoding when the page is over the per-page limit or the budget left.
        """
        if self.page_count > 1:
            self._image.seek(number - 1)
        frame = self._image
        width, height = self._check_pixels(number)
        plan = plan_page(width, height, self._limits)  # as stored; standing it upright only swaps the sides
        if frame.format in ("JPEG", "MPO"):
            frame.draft(None, (plan.width, plan.height))  # libjpeg decodes a big scan at 1/2, 1/4 or 1/8 scale
        cost = max(frame.width * frame.height, plan.pixels)
        if cost > pixels_left:
            raise DocumentLimitError(
                f"{self.name}: page {number} was not decoded: its {cost:,} pixels would pass the document's "
                f"pixel budget of {self._limits.max_total_pixels:,} (GNOSIS_MAX_TOTAL_PIXELS).",
                hint="Select fewer pages (--pages) or raise GNOSIS_MAX_TOTAL_PIXELS.",
            )
        frame.load()
        if _orientation(frame) in _SWAPS_SIDES:  # read after load(): a PNG may keep its EXIF after the pixels
            width, height = height, width
            plan = PagePlan(plan.scale, plan.height, plan.width)
        upright = ImageOps.exif_transpose(frame)  # always a new image, so closing or seeking the file spares it
        image = _resize(_to_rgb(upright), plan)
        scale = image.width / width  # the plan's scale, or about 1.0 where the image was kept as it is
        return Page(number=number, image=image, source_size=(float(width), float(height)), scale=scale), cost

    def close(self) -> None:
        self._image.close()

    def _check_pixels(self, number: int) -> tuple[int, int]:
        width, height = self._image.size  # from the header; nothing is decoded yet
        if width * height > self._limits.max_page_pixels:
            raise DocumentLimitError(
                f"{self.name}: page {number} is {width} x {height} pixels ({width * height / 1e6:,.0f} megapixels), "
                f"over the limit of {self._limits.max_page_pixels / 1e6:,.0f} megapixels per page "
                "(GNOSIS_MAX_PAGE_PIXELS); it was not decoded.",
                hint=_BOMB_HINT,
            )
        return width, height


def _open(source: Path | bytes, kind: Kind, name: str, limits: DocumentLimits) -> Image.Image:
    fp = source if isinstance(source, Path) else io.BytesIO(source)
    try:
        return Image.open(fp, formats=[_PILLOW_FORMAT[kind]])
    except Image.DecompressionBombError as exc:
        ceiling = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise DocumentLimitError(
            f"{name} declares an image of more than {ceiling / 1e6:,.0f} megapixels, past what Pillow will decode "
            f"(a likely decompression bomb); it was not decoded. gnosis-ocr reads at most "
            f"{limits.max_page_pixels / 1e6:,.0f} megapixels per page (GNOSIS_MAX_PAGE_PIXELS).",
            hint=_BOMB_HINT,
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BrokenDocumentError(
            f"{name} starts like a {kind.upper()} image but Pillow cannot read it ({exc}).",
            hint="The file may be truncated or damaged; export it again from the program that made it.",
        ) from exc


def _tiff_frames(source: Path | bytes, name: str, limits: DocumentLimits) -> int:
    """How many frames (pages) a TIFF has, counted up to the page limit and no further (``DocumentLimitError``)."""
    with source.open("rb") if isinstance(source, Path) else io.BytesIO(source) as file:
        count = count_tiff_frames(file, stop_after=limits.max_pages)
    if count > limits.max_pages:
        raise DocumentLimitError(
            f"{name} has more than {limits.max_pages:,} pages (TIFF frames), over the limit of {limits.max_pages:,} "
            "(GNOSIS_MAX_PAGES).",
            hint="Raise GNOSIS_MAX_PAGES to read it, or split it first (e.g. `tiffsplit in.tiff page-`).",
        )
    return max(count, 1)


def count_tiff_frames(file: BinaryIO, *, stop_after: int) -> int:
    """The number of image file directories (frames) in a TIFF or BigTIFF, or ``stop_after + 1`` if there are more.

    Follows the chain of directory offsets reading only each directory's entry count and next offset: linear in the
    frames counted, where Pillow's ``n_frames`` is quadratic and has no stop. A loop or a truncated chain ends the
    count (Pillow stops there too; such frames become that page's error when rendered).
    """
    head = file.read(16)
    order = "<" if head[:2] == b"II" else ">"
    if len(head) < 8:
        return 0
    (version,) = struct.unpack(order + "H", head[2:4])
    if version == 43:  # BigTIFF: 8-byte counts and offsets, 20-byte entries
        if len(head) < 16:
            return 0
        (offset,) = struct.unpack(order + "Q", head[8:16])
        count_format, entry_size, next_format = "Q", 20, "Q"
    else:
        (offset,) = struct.unpack(order + "I", head[4:8])
        count_format, entry_size, next_format = "H", 12, "I"
    count_size, next_size = struct.calcsize(count_format), struct.calcsize(next_format)
    seen: set[int] = set()
    frames = 0
    while offset and offset not in seen and frames <= stop_after:
        seen.add(offset)
        file.seek(offset)
        raw = file.read(count_size)
        if len(raw) < count_size:
            break
        (entries,) = struct.unpack(order + count_format, raw)
        frames += 1
        file.seek(offset + count_size + entries * entry_size)
        raw = file.read(next_size)
        if len(raw) < next_size:
            break
        (offset,) = struct.unpack(order + next_format, raw)
    return frames


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block is no reason to lose the page
        logger.debug("unreadable EXIF, treating the image as upright", exc_info=True)
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparency flattened onto white and 16/32-bit or float greys stretched to 8 bits."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        grey = image.convert("I") if image.mode.startswith("I;16") else image
        low, high = cast("tuple[float, float]", grey.getextrema())  # one band: (min, max)
        span = float(high - low) or 1.0
        grey = grey.point(lambda value: (value - low) * (255.0 / span))
        return grey.convert("L").convert("RGB")
    if image.mode == "P" or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, _WHITE)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image if image.mode == "RGB" else image.convert("RGB")


def _resize(image: Image.Image, plan: PagePlan) -> Image.Image:
    if abs(image.width - plan.width) <= _KEEP_SIZE * plan.width and (
        abs(image.height - plan.height) <= _KEEP_SIZE * plan.height
    ):
        return image
    return image.resize((plan.width, plan.height), Image.Resampling.LANCZOS, reducing_gap=3.0)
