from __future__ import annotations

import pytest

from gnosis_ocr.documents import sniff
from gnosis_ocr.errors import EmptyDocumentError, UnsupportedDocumentError
from tests.documents import make


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"%PDF-1.7\n", "pdf"),
        (b"\xef\xbb\xbf" + b"junk before the header\r\n" * 20 + b"%PDF-1.4\n", "pdf"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "jpeg"),
        (b"II*\x00\x08\x00\x00\x00", "tiff"),
        (b"MM\x00*\x00\x00\x00\x08", "tiff"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "webp"),
    ],
)
def test_supported_kinds_by_magic(head: bytes, kind: str) -> None:
    assert sniff(head) == kind


def test_real_files_sniff_as_what_they_are() -> None:
    assert sniff(make.text_pdf([["x"]])[:1024]) == "pdf"
    assert sniff(make.jpeg_with_orientation((20, 10), 6)[:1024]) == "jpeg"
    assert sniff(make.multipage_tiff([(10, 10), (12, 12)])[:1024]) == "tiff"
    assert sniff(make.image_bytes(make.marked_image((10, 10)), "WEBP")[:1024]) == "webp"


def test_pdf_header_past_the_first_kilobyte_is_not_a_pdf() -> None:
    with pytest.raises(UnsupportedDocumentError):
        sniff(b"\x00" * 1024 + b"%PDF-1.7\n")


def test_zero_bytes_is_empty() -> None:
    with pytest.raises(EmptyDocumentError, match=r"scan\.pdf is empty \(0 bytes\)"):
        sniff(b"", name="scan.pdf")


@pytest.mark.parametrize(
    ("head", "looks_like", "hint"),
    [
        (make.gif(), "GIF is not supported", "magick"),
        (make.docx_like_zip(), "looks like a ZIP/DOCX", "libreoffice --headless --convert-to pdf"),
        (b"PK\x03\x04" + b"\x00" * 26 + b"mimetypeapplication/epub+zip", "EPUB", "libreoffice"),
        (make.HTML, "looks like HTML/text", "print-to-pdf"),
        (b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg'/>", "SVG", "rsvg-convert"),
        (b"<?xml version='1.0'?><invoice/>", "XML/text", "export it as PDF"),
        (b"Dear reader,\nthis is just text.\n", "plain text", "export it as PDF"),
        (b"BM\x36\x00\x0c\x00\x00\x00\x00\x00\x36\x00", "BMP is not supported", "magick"),
        (b"BMW annual report, plain text\n", "plain text", "export it as PDF"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1\x00", "legacy Microsoft Office", "libreoffice"),
        (b"{\\rtf1\\ansi hello}", "RTF", "libreoffice"),
        (b"%!PS-Adobe-3.0\n", "PostScript", "ps2pdf"),
        (b"\x00\x00\x00\x1cftypheic\x00\x00", "HEIC/AVIF", "magick"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "RIFF file", "Supported"),
        (b"\x1f\x8b\x08\x00", "gzip", "gunzip"),
        (bytes(range(200, 256)), "starts with bytes c8 c9", "export it as PDF"),
    ],
)
def test_unsupported_says_what_it_saw_and_how_to_convert(head: bytes, looks_like: str, hint: str) -> None:
    with pytest.raises(UnsupportedDocumentError) as info:
        sniff(head[:1024], name="upload.pdf")
    assert info.value.message.startswith("upload.pdf is not a document gnosis-ocr reads")
    assert looks_like in info.value.message
    assert "Supported: PDF, PNG, JPEG, TIFF and WebP" in info.value.message
    assert info.value.hint is not None
    assert hint in info.value.hint


def test_a_zip_with_a_pdf_inside_is_still_a_zip() -> None:
    head = b"PK\x03\x04" + b"\x00" * 26 + b"inner.pdf" + b"%PDF-1.7\n"
    with pytest.raises(UnsupportedDocumentError, match="ZIP"):
        sniff(head)
