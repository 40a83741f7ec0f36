"""Documents made on the fly for the documents tests: real PDFs (reportlab, a hand-written object writer for the
broken ones, pypdf for AES encryption) and real images (Pillow). Nothing here is read from disk."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Sequence

from PIL import Image, ImageDraw
from pypdf import PdfReader, PdfWriter
from reportlab.lib.pdfencrypt import StandardEncryption
from reportlab.pdfgen import canvas

LETTER = (612.0, 792.0)


def text_pdf(
    pages: Sequence[Sequence[str]],
    *,
    pagesize: tuple[float, float] = LETTER,
    encrypt: StandardEncryption | None = None,
    font_size: float = 12,
) -> bytes:
    """A PDF with one page per item of ``pages``, each line drawn as real text."""
    buf = io.BytesIO()
    pdf = canvas.Canvas(buf, pagesize=pagesize, encrypt=encrypt, invariant=True)
    width, height = pagesize
    for lines in pages:
        pdf.setFont("Helvetica", font_size)
        y = height - 2 * font_size
        for line in lines:
            pdf.drawString(min(36, width / 10), y, line)
            y -= font_size * 1.5
        pdf.showPage()
    pdf.save()
    return buf.getvalue()


def two_column_pdf(left: Sequence[str], right: Sequence[str]) -> bytes:
    """One page, two columns of text; the content stream draws the whole left column first."""
    buf = io.BytesIO()
    pdf = canvas.Canvas(buf, pagesize=LETTER, invariant=True)
    pdf.setFont("Helvetica", 11)
    for x, lines in ((54, left), (320, right)):
        y = 720.0
        for line in lines:
            pdf.drawString(x, y, line)
            y -= 16
    pdf.showPage()
    pdf.save()
    return buf.getvalue()


def marked_pdf(*, rotate: int = 0) -> bytes:
    """A portrait page (400 x 600 pt) with a black square in its top-left corner, then /Rotate set (by pypdf:
    reportlab's own page rotation also swaps the MediaBox)."""
    buf = io.BytesIO()
    pdf = canvas.Canvas(buf, pagesize=(400, 600), invariant=True)
    pdf.rect(0, 500, 100, 100, stroke=0, fill=1)
    pdf.setFont("Helvetica", 12)
    pdf.drawString(150, 300, "rotated page")
    pdf.showPage()
    pdf.save()
    return rotated(buf.getvalue(), {1: rotate}) if rotate else buf.getvalue()


def rotated(data: bytes, angles: dict[int, int]) -> bytes:
    """``data`` with /Rotate set on the 1-based pages in ``angles``."""
    writer = PdfWriter()
    writer.append(PdfReader(io.BytesIO(data)))
    for number, angle in angles.items():
        writer.pages[number - 1].rotate(angle)
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


PASSWORD = "secret"  # noqa: S105 (a test document's password)


def encrypted_pdf() -> bytes:
    """RC4 user-password encryption (reportlab)."""
    return text_pdf([["locked"]], encrypt=StandardEncryption(PASSWORD, canPrint=0))


def owner_only_pdf() -> bytes:
    """Encrypted with an owner password only: anyone may open it, restrictions aside."""
    return text_pdf([["open to read"]], encrypt=StandardEncryption("", ownerPassword="owner", canPrint=0))


def aes_encrypted_pdf() -> bytes:
    """AES-256 user-password encryption (pypdf)."""
    writer = PdfWriter()
    writer.append(PdfReader(io.BytesIO(text_pdf([["locked"]]))))
    writer.encrypt(PASSWORD, algorithm="AES-256")
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def raw_pdf(objects: Sequence[bytes], *, root: int = 1) -> bytes:
    """A PDF written object by object with a correct xref table, for structures no PDF library would write."""
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, root, xref)
    return bytes(out)


def zero_page_pdf() -> bytes:
    return raw_pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"])


def bad_page_pdf() -> bytes:
    """Three pages, the second of which is not a page object at all: pages 1 and 3 render, page 2 cannot."""
    content = b"BT /F1 12 Tf 10 40 Td (page %d) Tj ET"
    font = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
    page = (
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 100] /Contents %d 0 R"
        b" /Resources << /Font << /F1 6 0 R >> >> >>"
    )
    return raw_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R 4 0 R 5 0 R] /Count 3 >>",
            page % 7,
            b"42",
            page % 8,
            font,
            _stream(content % 1),
            _stream(content % 3),
        ]
    )


def _stream(data: bytes) -> bytes:
    return b"<< /Length %d >>\nstream\n%s\nendstream" % (len(data), data)


def truncated_pdf() -> bytes:
    """The first half of a real PDF."""
    data = text_pdf([["first page"], ["second page"]])
    return data[: len(data) // 2]


def broken_xref_pdf() -> bytes:
    """A real PDF whose xref table and startxref offset are garbage (PDFium rebuilds the xref from the objects)."""
    data = text_pdf([["xref is garbage"], ["still readable"]])
    start = data.rindex(b"\nxref") + 1
    tail = data.index(b"trailer", start)
    startxref = data.rindex(b"startxref")
    return (
        data[:start] + b"xref\n0 9\nthis is not an xref table\n" + data[tail:startxref] + b"startxref\n999999\n%%EOF\n"
    )


def hopeless_pdf() -> bytes:
    """A PDF header and nothing a parser can use."""
    return b"%PDF-1.7\n" + bytes(range(256)) * 4


# ---------------------------------------------------------------- images


def image_bytes(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def marked_image(size: tuple[int, int], *, mode: str = "RGB") -> Image.Image:
    """A white image whose left half is black (so a rotation is visible)."""
    image = Image.new(mode, size, "white")
    ImageDraw.Draw(image).rectangle((0, 0, size[0] // 2 - 1, size[1] - 1), fill="black")
    return image


def jpeg_with_orientation(size: tuple[int, int], orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return image_bytes(marked_image(size), "JPEG", exif=exif, quality=90)


def multipage_tiff(sizes: Sequence[tuple[int, int]]) -> bytes:
    frames = [marked_image(size, mode="L") for size in sizes]
    return image_bytes(frames[0], "TIFF", save_all=True, append_images=frames[1:], compression="tiff_deflate")


def png_bomb(width: int, height: int) -> bytes:
    """A PNG header claiming ``width`` x ``height`` 8-bit grey pixels, followed by IDAT bytes that are not even a
    valid zlib stream: decoding it would fail (or take gigabytes), so refusing it must happen on the header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"not zlib " * 8) + chunk(b"IEND", b"")


def gif() -> bytes:
    return image_bytes(Image.new("P", (8, 8)), "GIF")


def docx_like_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", "<w:document/>")
    return buf.getvalue()


HTML = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"


# ---------------------------------------------------------------- hostile documents


def render_bomb_pdf(*, depth: int = 7, fanout: int = 16) -> bytes:
    """Three pages, the second a render bomb of about 4 KB: Form XObjects nested ``depth`` deep, each drawing the one
    below ``fanout`` times (16**7 fills in all), which PDFium parses per use, allocating without bound. Pages 1 and
    3 are ordinary text. Render it only under a memory limit."""
    font = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 100] /Contents %d 0 R /Resources << %s >> >>"
    first_form = 10
    forms = [b"<< /Type /XObject /Subtype /Form /BBox [0 0 1 1] /Length 12 >>\nstream\n0 0 1 1 re f\nendstream"]
    for level in range(1, depth + 1):
        draws = b" ".join(b"q 1 0 0 1 %d 0 cm /X Do Q" % (i % 2) for i in range(fanout))
        forms.append(
            b"<< /Type /XObject /Subtype /Form /BBox [0 0 100 100] /Resources << /XObject << /X %d 0 R >> >>"
            b" /Length %d >>\nstream\n%s\nendstream" % (first_form + level - 1, len(draws), draws)
        )
    text = b"BT /F1 12 Tf 10 40 Td (page %d) Tj ET"
    return raw_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R 4 0 R 5 0 R] /Count 3 >>",
            page % (6, b"/Font << /F1 7 0 R >>"),
            page % (8, b"/XObject << /X %d 0 R >>" % (first_form + depth)),
            page % (9, b"/Font << /F1 7 0 R >>"),
            _stream(text % 1),
            font,
            _stream(b"/X Do"),
            _stream(text % 3),
            *forms,
        ]
    )


def many_frame_tiff(frames: int) -> bytes:
    """A TIFF of ``frames`` 1 x 1 grey frames sharing one pixel, about 100 bytes a frame (written directly: Pillow's
    ``save_all`` takes minutes for tens of thousands of frames)."""
    out = bytearray(b"II*\x00" + struct.pack("<I", 10) + b"\x80\x00")  # header, the pixel, a pad byte
    entries = [(256, 3, 1), (257, 3, 1), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8), (278, 3, 1), (279, 4, 1)]
    ifd_size = 2 + 12 * len(entries) + 4
    for index in range(frames):
        out += struct.pack("<H", len(entries))
        for tag, kind, value in entries:
            out += struct.pack("<HHII", tag, kind, 1, value)  # little-endian: a SHORT sits in the low bytes
        following = len(out) + 4 if index < frames - 1 else 0
        out += struct.pack("<I", following)
        assert following in (0, 10 + (index + 1) * ifd_size)
    return bytes(out)
