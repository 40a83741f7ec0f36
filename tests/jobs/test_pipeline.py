"""A document through the pipeline with the deterministic fake engine: pages, batches, text layer, failures."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from gnosis_ocr.documents.model import DocumentLimits
from gnosis_ocr.engines.base import EngineInfo
from gnosis_ocr.errors import ConfigError, EncryptedDocumentError
from gnosis_ocr.jobs.pipeline import OcrOptions, ocr_document, usable_text_layer
from gnosis_ocr.jobs.results import PageResult
from tests.documents import make
from tests.support.fakeengine import FakeEngine

TEXT = [
    ["Page one says hello to the reader of this test."],
    ["Page two has other words in it, many."],
    ["Page three closes the document with a line."],
]


class Recorder:
    def __init__(self) -> None:
        self.started: list[tuple[str, int]] = []
        self.done: list[int] = []

    def document_started(self, name: str, pages: int) -> None:
        self.started.append((name, pages))

    def page_done(self, name: str, page: PageResult) -> None:
        self.done.append(page.number)


def test_all_pages_in_batches_with_progress() -> None:
    engine = FakeEngine(batch_size=2, delay=0.5)
    recorder = Recorder()
    result = ocr_document(
        make.text_pdf(TEXT), engine, name="a.pdf", options=OcrOptions(text_layer="never"), progress=recorder
    )
    assert [p.number for p in result.pages] == [1, 2, 3]
    # page 1 starts alone; pages 2 and 3, rendered while it is read, wait together and go as one batch
    assert sorted(n for call in engine.calls for n in call) == [1, 2, 3]
    assert max(len(call) for call in engine.calls) == 2
    assert recorder.started == [("a.pdf", 3)] and sorted(recorder.done) == [1, 2, 3]
    assert all(p.source == "ocr" and p.markdown.startswith(f"# Page {p.number}") for p in result.pages)
    md = result.markdown()
    assert md.index("<!-- page 1 -->") < md.index("<!-- page 2 -->") < md.index("<!-- page 3 -->")


def test_text_layer_auto_uses_it_with_a_cpu_engine_and_not_with_a_vlm() -> None:
    data = make.text_pdf(TEXT)
    cpu = ocr_document(data, FakeEngine(), options=OcrOptions(text_layer="auto"))
    assert [p.source for p in cpu.pages] == ["text-layer"] * 3
    assert "hello to the reader" in cpu.pages[0].markdown

    class Vlm(FakeEngine):
        @property
        def info(self) -> EngineInfo:
            return EngineInfo(name="fake-vlm", vlm=True)

    vlm = ocr_document(data, Vlm(), options=OcrOptions(text_layer="auto"))
    assert [p.source for p in vlm.pages] == ["ocr"] * 3


def test_text_layer_only_never_runs_ocr() -> None:
    image_pdf = make.image_bytes(Image.new("RGB", (300, 200), "white"), "PNG")
    engine = FakeEngine()
    result = ocr_document(image_pdf, engine, options=OcrOptions(text_layer="only"))
    assert engine.calls == []
    assert result.pages[0].error is not None and "no usable text layer" in result.pages[0].error


def test_page_selection_and_its_errors() -> None:
    result = ocr_document(make.text_pdf(TEXT), FakeEngine(), options=OcrOptions(pages="3,1", text_layer="never"))
    assert [p.number for p in result.pages] == [1, 3]
    with pytest.raises(ConfigError, match="3 page"):
        ocr_document(make.text_pdf(TEXT), FakeEngine(), options=OcrOptions(pages="7"))


def test_a_failing_page_does_not_fail_the_document() -> None:
    result = ocr_document(
        make.bad_page_pdf(), FakeEngine(fail_pages=frozenset({3})), options=OcrOptions(text_layer="never")
    )
    assert [(p.number, p.ok) for p in result.pages] == [(1, True), (2, False), (3, False)]
    assert result.failed_pages == [2, 3]
    assert "page 2: failed" in result.markdown()
    doc = result.to_dict()
    assert doc["pages"][1]["error"] and doc["pages"][0]["markdown"]


def test_document_errors_propagate_with_their_message() -> None:
    with pytest.raises(EncryptedDocumentError, match="password"):
        ocr_document(make.encrypted_pdf(), FakeEngine())


def test_limits_apply(tmp_path: Path) -> None:
    path = tmp_path / "big.pdf"
    path.write_bytes(make.text_pdf(TEXT))
    with pytest.raises(Exception, match="GNOSIS_MAX_PAGES"):
        ocr_document(path, FakeEngine(), options=OcrOptions(limits=DocumentLimits(max_pages=2)))


@pytest.mark.parametrize(
    ("text", "usable"),
    [
        (None, False),
        ("", False),
        ("   \n ", False),
        ("short", False),
        ("A real sentence with enough letters in it.", True),
        ("\ufffd\ufffd\ufffd\ufffd\ufffd\ufffd\ufffd\ufffd\ufffd\ufffd abcdefghijkl", False),
        ("(((( )))) ---- ;;;; ,,,, .... !!!!", False),
    ],
)
def test_usable_text_layer(text: str | None, usable: bool) -> None:
    assert usable_text_layer(text) is usable
