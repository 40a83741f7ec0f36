"""`gnosis-ocr ocr -f pdf`: a searchable PDF per input, written whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pypdfium2 as pdfium

from tests.cli.test_ocr_cli import ocr
from tests.documents import make


def test_a_searchable_pdf_of_a_document(tmp_path: Path) -> None:
    letter = tmp_path / "letter.pdf"
    letter.write_bytes(make.text_pdf([["Dear reader, this letter has a text layer."], ["Second page, Grüße."]]))
    out = tmp_path / "out" / "letter-searchable.pdf"
    run = ocr(str(letter), "-e", "tesseract", "-f", "pdf", "-o", str(out))
    assert run.returncode == 0, run.stderr
    pdf = pdfium.PdfDocument(out.read_bytes())
    assert len(pdf) == 2 and pdf[0].get_size() == (612.0, 792.0)
    texts = [pdf[i].get_textpage().get_text_range() for i in range(2)]
    assert texts[0].split() == ["Dear", "reader,", "this", "letter", "has", "a", "text", "layer."]
    assert texts[1].split() == ["Second", "page,", "Grüße."]
    assert [p.name for p in out.parent.iterdir()] == ["letter-searchable.pdf"]  # no partial file left


def test_pdf_needs_a_file_and_never_guesses_one(tmp_path: Path) -> None:
    letter = tmp_path / "letter.pdf"
    letter.write_bytes(make.text_pdf([["Some text on a page here."]]))
    to_terminal = ocr(str(letter), "-e", "fake", "-f", "pdf")
    assert to_terminal.returncode == 2 and "-f pdf writes a binary file" in to_terminal.stderr
    several = tmp_path / "two"
    image = tmp_path / "scan.png"
    image.write_bytes(make.image_bytes(make.marked_image((400, 300)), "PNG"))
    run = ocr(str(letter), str(image), "-e", "fake", "--text-layer", "never", "-f", "pdf", "-o", str(several))
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in several.iterdir()) == ["letter.pdf", "scan.pdf"]
    assert len(pdfium.PdfDocument((several / "scan.pdf").read_bytes())) == 1
