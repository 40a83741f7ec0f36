"""The Document contract: limits checked before the work they guard, laziness, closing, threads, imports."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from gnosis_ocr.documents import DocumentLimits, Page, PageError, open_document
from gnosis_ocr.errors import ConfigError, DocumentLimitError, EmptyDocumentError, UnsupportedDocumentError
from tests.documents import make


def test_over_max_bytes_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.pdf"
    path.write_bytes(make.text_pdf([["x"]] * 3))
    limits = DocumentLimits(max_bytes=1024)
    with pytest.raises(DocumentLimitError) as info:
        open_document(path, limits=limits)
    size = path.stat().st_size / 1024
    assert info.value.message == f"big.pdf is {size:.1f} KiB, over the limit of 1.0 KiB (GNOSIS_MAX_BYTES)."
    with pytest.raises(DocumentLimitError, match="GNOSIS_MAX_BYTES"):
        open_document(b"\x00" * 2048, limits=limits)  # not even sniffed: the size comes first


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (make.text_pdf([["page"]] * 5), "has 5 pages"),
        (make.multipage_tiff([(20, 20)] * 5), "has more than 4 pages (TIFF frames)"),  # counting stops at the limit
    ],
    ids=["pdf", "tiff"],
)
def test_over_max_pages(data: bytes, says: str) -> None:
    with pytest.raises(DocumentLimitError) as info:
        open_document(data, limits=DocumentLimits(max_pages=4), name="long.doc")
    assert info.value.message == f"long.doc {says}, over the limit of 4 (GNOSIS_MAX_PAGES)."
    assert info.value.hint is not None
    assert "Raise GNOSIS_MAX_PAGES" in info.value.hint


def test_total_pixel_budget_turns_the_rest_into_page_errors(small: DocumentLimits) -> None:
    limits = DocumentLimits(target_pixels=small.target_pixels, min_long_side=256, max_total_pixels=250_000)
    with open_document(make.text_pdf([[f"page {n}"] for n in range(1, 5)]), limits=limits, name="a.pdf") as doc:
        items = list(doc.pages())
    assert [type(item) for item in items] == [Page, Page, PageError, PageError]
    error = items[2]
    assert isinstance(error, PageError)
    assert error.message.startswith("a.pdf: page 3 was not rendered:")
    assert "pixel budget of 250,000 (GNOSIS_MAX_TOTAL_PIXELS)" in error.message


def test_empty_file_and_unsupported_content_name_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "nothing.pdf"
    empty.write_bytes(b"")
    with pytest.raises(EmptyDocumentError, match=r"^nothing\.pdf is empty \(0 bytes\)"):
        open_document(empty)
    for name, data, seen in [
        ("page.pdf", make.HTML, "HTML/text"),
        ("report.pdf", make.docx_like_zip(), "ZIP/DOCX"),
        ("scan.pdf", make.gif(), "GIF is not supported"),
    ]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(UnsupportedDocumentError, match=rf"^{name.replace('.', '[.]')} is not a document .*{seen}"):
            open_document(path)


def test_page_selection_is_checked_up_front_and_order_is_kept(small: DocumentLimits) -> None:
    with open_document(make.text_pdf([["one"], ["two"], ["three"]]), limits=small) as doc:
        with pytest.raises(ConfigError, match="There is no page 4: the document has 3 pages"):
            doc.pages([1, 4])  # raised by the call, before any page is rendered
        assert [item.number for item in doc.pages([3, 1])] == [3, 1]


def test_pages_are_rendered_lazily_and_not_kept(small: DocumentLimits) -> None:
    """Memory stays bounded: the document holds no page it has handed out, and renders none ahead."""
    data = make.text_pdf([[f"page {n}"] for n in range(1, 31)])
    seen: list[weakref.ref[object]] = []
    with open_document(data, limits=small) as doc:
        pages = doc.pages()
        for item in pages:
            assert isinstance(item, Page)
            assert all(ref() is None for ref in seen), "an earlier page image is still referenced"
            seen.append(weakref.ref(item.image))
            del item
    assert len(seen) == 30


def test_closing(tmp_path: Path, small: DocumentLimits) -> None:
    pdf = tmp_path / "doc.pdf"
    pdf.write_bytes(make.text_pdf([["a"], ["b"]]))
    tiff = tmp_path / "scan.tiff"
    tiff.write_bytes(make.multipage_tiff([(50, 50), (60, 60)]))
    for path in (pdf, tiff):
        with open_document(path, limits=small) as doc:
            assert doc.name == path.name
            first = next(doc.pages())
            assert _open_fds_to(path) or sys.platform != "linux"
        assert doc.closed
        assert not _open_fds_to(path)  # PDFium and Pillow let go of the file
        assert isinstance(first, Page)
        assert first.image.convert("L").getextrema() is not None  # pages outlive their document
        with pytest.raises(ValueError, match="is closed"):
            doc.pages()
        doc.close()  # twice is fine


def test_dropping_an_open_document_releases_the_file(tmp_path: Path) -> None:
    path = tmp_path / "forgotten.pdf"
    path.write_bytes(make.text_pdf([["a"]]))
    doc = open_document(path)
    del doc
    assert not _open_fds_to(path)


def _open_fds_to(path: Path) -> bool:
    """Whether this process or one of its children (the render workers) has ``path`` open."""
    if not Path("/proc/self/fd").is_dir():
        return False
    targets = []
    for pid in [os.getpid(), *(child.pid for child in psutil.Process().children(recursive=True))]:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            fds = list(fd_dir.iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                targets.append(os.readlink(fd))
            except OSError:
                continue
    return str(path) in targets


def test_threads_share_pdfium_safely(small: DocumentLimits) -> None:
    data = make.text_pdf([[f"thread page {n}", "some more text"] for n in range(1, 7)])

    def render_all() -> list[str]:
        with open_document(data, limits=small) as doc:
            return [hashlib.sha256(p.image.tobytes()).hexdigest() for p in doc.pages() if isinstance(p, Page)]

    expected = render_all()
    assert len(expected) == 6
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda _: render_all(), range(12)))
    assert all(result == expected for result in results)


def test_no_temporary_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small: DocumentLimits) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("TMPDIR", str(scratch))
    for data in (make.text_pdf([["x"]]), make.multipage_tiff([(30, 30)] * 2), make.jpeg_with_orientation((30, 20), 6)):
        with open_document(data, limits=small) as doc:
            list(doc.pages())
    assert list(scratch.iterdir()) == []


def test_import_is_light() -> None:
    code = (
        "import sys, gnosis_ocr.documents\n"
        "heavy = [m for m in ('torch', 'transformers', 'pypdfium2', 'PIL.Image') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
