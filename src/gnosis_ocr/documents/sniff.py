"""Tell what a document is from its first bytes, never from its file name.

``sniff`` knows the five kinds gnosis-ocr reads and, for the formats people commonly upload by mistake (office
files, web pages, GIFs, archives), says what it saw and how to convert it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gnosis_ocr.documents.model import Kind
from gnosis_ocr.errors import EmptyDocumentError, UnsupportedDocumentError

#: How many leading bytes ``sniff`` looks at. PDF readers accept junk before ``%PDF-`` within the first kilobyte.
HEAD_BYTES = 1024

SUPPORTED = "PDF, PNG, JPEG, TIFF and WebP"

_OFFICE_HINT = "Convert it to PDF first, e.g. `libreoffice --headless --convert-to pdf FILE`."
_EXPORT = "if you meant to OCR it, export it as PDF."
_IMAGE_HINT = "Convert it to PNG first, e.g. `magick FILE page.png` (ImageMagick)."


@dataclass(frozen=True)
class _Foreign:
    """A format we recognise but do not read: what it looks like, and how to get a supported one."""

    looks_like: str
    hint: str


# Checked at offset 0, in order. Kept apart from the supported kinds so a ZIP that happens to contain a PDF
# near its start is still called a ZIP.
_FOREIGN_MAGIC: tuple[tuple[bytes, _Foreign], ...] = (
    (b"GIF87a", _Foreign("a GIF image; GIF is not supported", _IMAGE_HINT)),
    (b"GIF89a", _Foreign("a GIF image; GIF is not supported", _IMAGE_HINT)),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", _Foreign("a JPEG 2000 image; JPEG 2000 is not supported", _IMAGE_HINT)),
    (b"\xff\x4f\xff\x51", _Foreign("a JPEG 2000 codestream; JPEG 2000 is not supported", _IMAGE_HINT)),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", _Foreign("a legacy Microsoft Office file (DOC, XLS or PPT)", _OFFICE_HINT)),
    (b"{\\rtf", _Foreign("an RTF document", _OFFICE_HINT)),
    (b"%!PS", _Foreign("a PostScript file", "Convert it to PDF first, e.g. `ps2pdf FILE out.pdf` (Ghostscript).")),
    (b"AT&TFORM", _Foreign("a DjVu document", "Convert it to PDF first, e.g. `ddjvu -format=pdf FILE out.pdf`.")),
    (b"\x1f\x8b", _Foreign("a gzip-compressed file", "Decompress it first (`gunzip`) and upload what is inside.")),
    (b"7z\xbc\xaf\x27\x1c", _Foreign("a 7-Zip archive", "Extract it first and upload the documents inside.")),
    (b"Rar!\x1a\x07", _Foreign("a RAR archive", "Extract it first and upload the documents inside.")),
)

_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis")


def sniff(head: bytes, *, name: str = "The document") -> Kind:
    """The kind of document whose first bytes are ``head`` (pass at least ``HEAD_BYTES`` when there are that many).

    ``name`` (a file name, or "The upload") starts the error messages.

    Raises ``EmptyDocumentError`` for zero bytes and ``UnsupportedDocumentError`` for anything else that is not a
    PDF, PNG, JPEG, TIFF or WebP, saying what the bytes look like and how to convert them.
    """
    if not head:
        raise EmptyDocumentError(
            f"{name} is empty (0 bytes).", hint="Check that the file was written or uploaded completely."
        )
    kind = _supported_kind(head)
    if kind is not None:
        return kind
    foreign = _foreign(head)
    raise UnsupportedDocumentError(
        f"{name} is not a document gnosis-ocr reads: it looks like {foreign.looks_like}. Supported: {SUPPORTED}.",
        hint=foreign.hint,
    )


_SUPPORTED_MAGIC: tuple[tuple[bytes, Kind], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
)


def _supported_kind(head: bytes) -> Kind | None:
    for magic, kind in _SUPPORTED_MAGIC:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if _known_foreign(head) is None and b"%PDF-" in head[:HEAD_BYTES]:
        return "pdf"
    return None


def _foreign(head: bytes) -> _Foreign:
    found = _known_foreign(head)
    if found is None:
        text = _as_text(head)
        found = _text_kind(text) if text is not None else None
    return found or _Foreign(
        f"none of them (it starts with bytes {head[:8].hex(' ')})",
        "Check that the file is what you meant to send; if it is a document, export it as PDF.",
    )


def _known_foreign(head: bytes) -> _Foreign | None:
    """A binary format recognised by its leading bytes."""
    for magic, foreign in _FOREIGN_MAGIC:
        if head.startswith(magic):
            return foreign
    if head.startswith(b"BM") and head[6:10] == b"\x00\x00\x00\x00":  # "BM" + the zero reserved header words
        return _Foreign("a BMP image; BMP is not supported", _IMAGE_HINT)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _zip_kind(head)
    return _media_kind(head)


def _media_kind(head: bytes) -> _Foreign | None:
    if head[:4] == b"RIFF":
        return _Foreign(
            f"a RIFF file of type {head[8:12]!r} (audio or video, not WebP)", f"Supported: {SUPPORTED} only."
        )
    if head[4:8] == b"ftyp":
        if head[8:12] in _HEIF_BRANDS:
            return _Foreign("a HEIC/AVIF image; HEIC and AVIF are not supported", _IMAGE_HINT)
        return _Foreign("an MP4/QuickTime media file", f"Supported: {SUPPORTED} only.")
    return None


def _zip_kind(head: bytes) -> _Foreign:
    # OpenDocument and EPUB store an uncompressed ``mimetype`` entry first, so its value sits in the head.
    if b"mimetypeapplication/epub+zip" in head:
        what = "an EPUB e-book (a ZIP archive)"
    elif b"mimetypeapplication/vnd.oasis.opendocument" in head:
        what = "an OpenDocument file (ODT/ODS/ODP, a ZIP archive)"
    elif b"[Content_Types].xml" in head or b"word/" in head or b"xl/" in head or b"ppt/" in head:
        what = "a ZIP/DOCX: an Office Open XML file (DOCX, XLSX or PPTX)"
    else:
        what = "a ZIP archive (DOCX, XLSX, ODT and EPUB files are ZIP archives too)"
    return _Foreign(what, f"{_OFFICE_HINT} If it is an archive of documents, extract it and upload them one by one.")


def _as_text(head: bytes) -> str | None:
    """``head`` decoded as UTF-8 (or UTF-16 with a BOM) when it reads as text, else None."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return head.decode("utf-16", errors="replace")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # a character cut at the end of the head is fine, anything earlier is not
            return None
        text = head[: exc.start].decode("utf-8")
    printable = sum(ch.isprintable() or ch in "\t\r\n\f" for ch in text)
    return text if text and printable >= 0.95 * len(text) else None


def _text_kind(text: str) -> _Foreign:
    start = text.lstrip("\ufeff \t\r\n").lower()
    if "<svg" in start[:HEAD_BYTES]:
        return _Foreign(
            "an SVG image; SVG is not supported", "Convert it to PDF first, e.g. `rsvg-convert -f pdf FILE -o out.pdf`."
        )
    if start.startswith(("<!doctype html", "<html", "<head", "<body")) or "<html" in start[:HEAD_BYTES]:
        return _Foreign(
            "HTML/text (a web page, perhaps an error page saved under the document's name)",
            "Open the URL in a browser to check it; to OCR a page, print it to PDF, "
            "e.g. `chromium --headless --print-to-pdf=out.pdf FILE`.",
        )
    if start.startswith("<"):
        return _Foreign(
            "XML/text", "Text formats have no page images to read; if you meant to OCR it, export it as PDF."
        )
    return _Foreign(
        "plain text", "It is already text and has no page images to read; if you meant to OCR it, export it as PDF."
    )
