"""Rendering in worker processes: a runaway page (a render bomb made here, ~4 KB) costs only itself, within the
memory and time limits; other documents open and render meanwhile; the server process's memory stays flat."""

from __future__ import annotations

import dataclasses
import io
import threading
import time
from pathlib import Path

import psutil
import pytest

from gnosis_ocr.documents import DocumentLimits, Page, PageError, open_document
from gnosis_ocr.documents.images import count_tiff_frames
from gnosis_ocr.documents.isolated import worker_pool
from gnosis_ocr.errors import DocumentLimitError
from tests.documents import make

# A low ceiling bounds this test's own risk: the bomb would take every byte of the machine without it.
BOMB_LIMITS = DocumentLimits(
    target_pixels=120_000, min_long_side=256, render_workers=2, render_memory_bytes=512 * 2**20, render_timeout=30.0
)
MESSAGE = (
    "bomb.pdf: page 2 could not be rendered within 512 MiB / 30 s "
    "(GNOSIS_RENDER_MEMORY_MIB / GNOSIS_RENDER_TIMEOUT_SECONDS): the PDF may be malformed or hostile."
)


def test_a_render_bomb_fails_its_page_alone(tmp_path: Path) -> None:
    path = tmp_path / "bomb.pdf"
    path.write_bytes(make.render_bomb_pdf())
    assert path.stat().st_size < 8 * 1024
    ours = psutil.Process()
    before = ours.memory_info().rss
    with open_document(path, limits=BOMB_LIMITS) as doc:
        assert doc.page_count == 3  # opening is cheap: the bomb goes off only when its page is drawn
        items = list(doc.pages())
    assert [type(item) for item in items] == [Page, PageError, Page]
    assert isinstance(items[1], PageError)
    assert items[1].message == MESSAGE
    assert ours.memory_info().rss - before < 100 * 2**20  # the renderer's gigabytes never came here
    again = open_document(path, limits=BOMB_LIMITS)  # the pool replaced the dead worker: the next page renders
    with again:
        assert isinstance(next(again.pages([3])), Page)


def test_a_page_over_its_time_is_killed_and_fails_alone(tmp_path: Path) -> None:
    path = tmp_path / "bomb.pdf"
    path.write_bytes(make.render_bomb_pdf())
    limits = dataclasses.replace(BOMB_LIMITS, render_memory_bytes=1024 * 2**20, render_timeout=0.5)
    started = time.monotonic()
    with open_document(path, limits=limits) as doc:
        item = next(doc.pages([2]))
    assert isinstance(item, PageError)
    assert "could not be rendered within 1 GiB / 0.5 s" in item.message
    assert time.monotonic() - started < 10


def test_other_documents_render_while_a_bomb_does(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.pdf"
    bomb.write_bytes(make.render_bomb_pdf())
    other = tmp_path / "letter.pdf"
    other.write_bytes(make.text_pdf([["an ordinary letter"], ["page two"]]))
    worker_pool("render", BOMB_LIMITS).start()
    worker_pool("open", BOMB_LIMITS).start()
    done = threading.Event()
    failed: list[PageError | Page] = []

    def explode() -> None:
        with open_document(bomb, limits=BOMB_LIMITS) as doc:
            failed.append(next(doc.pages([2])))
        done.set()

    thread = threading.Thread(target=explode)
    thread.start()
    try:
        time.sleep(0.2)  # the bomb is in its worker by now
        with open_document(other, limits=BOMB_LIMITS) as doc:
            pages = list(doc.pages())
        finished_first = not done.is_set()
    finally:
        thread.join(60)
    assert all(isinstance(p, Page) for p in pages)
    assert finished_first, "an ordinary document waited for the bomb"
    assert isinstance(failed[0], PageError)


def test_a_bomb_in_bytes_leaves_no_spooled_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with open_document(make.render_bomb_pdf(), limits=BOMB_LIMITS, name="bomb.pdf") as doc:
        assert len(list(scratch.iterdir())) == 1  # the workers read the bytes from one private file
        assert isinstance(next(doc.pages([2])), PageError)
    assert list(scratch.iterdir()) == []


def test_a_many_frame_tiff_is_refused_without_counting_every_frame() -> None:
    data = make.many_frame_tiff(40_000)  # Pillow's n_frames takes seconds here, and grows with the square
    started = time.monotonic()
    with pytest.raises(DocumentLimitError, match=r"more than 500 pages \(TIFF frames\)"):
        open_document(data, limits=DocumentLimits(max_pages=500), name="frames.tiff")
    assert time.monotonic() - started < 2.0


def test_frame_count_stops_at_the_limit_and_on_loops() -> None:
    assert count_tiff_frames(io.BytesIO(make.many_frame_tiff(7)), stop_after=100) == 7
    assert count_tiff_frames(io.BytesIO(make.many_frame_tiff(1000)), stop_after=10) == 11
    looped = bytearray(make.many_frame_tiff(3))
    looped[-4:] = (10).to_bytes(4, "little")  # the last frame points back at the first
    assert count_tiff_frames(io.BytesIO(bytes(looped)), stop_after=100) == 3
    big = make.multipage_tiff([(20, 20)] * 3)
    assert count_tiff_frames(io.BytesIO(big), stop_after=100) == 3
