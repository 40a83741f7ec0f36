"""`gnosis-ocr ocr` as a shell user meets it (fake engine: deterministic, no model needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.documents import make

ROOT = Path(__file__).resolve().parents[2]


def ocr(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT), "MODEL_CACHE_PATH": str(cwd / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "gnosis_ocr", "ocr", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def docs(tmp_path: Path) -> dict[str, Path]:
    files = {
        "letter.pdf": make.text_pdf([["Dear reader, this letter has a text layer."], ["Second page of it here."]]),
        "scan.png": make.image_bytes(make.marked_image((400, 300)), "PNG"),
        "locked.pdf": make.encrypted_pdf(),
        "fake.pdf": b"<html><body>not a pdf</body></html>",
        "holes.pdf": make.bad_page_pdf(),
    }
    out = {}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        out[name] = tmp_path / name
    return out


def test_markdown_to_stdout(docs: dict[str, Path]) -> None:
    run = ocr(str(docs["letter.pdf"]), "--engine", "fake", "--text-layer", "never")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("<!-- page 1 -->") and "<!-- page 2 -->" in run.stdout
    assert "engine: fake" in run.stderr


def test_json_with_page_selection(docs: dict[str, Path]) -> None:
    run = ocr(str(docs["letter.pdf"]), "-e", "fake", "-f", "json", "--pages", "2")
    doc = json.loads(run.stdout)["documents"][0]
    assert doc["document"] == "letter.pdf" and doc["page_count"] == 2
    assert [p["page"] for p in doc["pages"]] == [2]
    assert doc["pages"][0]["source"] == "text-layer" and "Second page" in doc["pages"][0]["markdown"]


def test_folder_output_and_a_bad_input_among_good_ones(docs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = ocr(
        str(docs["letter.pdf"]),
        str(docs["locked.pdf"]),
        str(docs["scan.png"]),
        str(docs["fake.pdf"]),
        "-e",
        "fake",
        "-o",
        str(out),
    )
    assert run.returncode == 9
    assert "locked.pdf: The PDF is password-protected" in run.stderr or "password" in run.stderr
    assert "fake.pdf" in run.stderr and "HTML" in run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["letter.md", "scan.md"]
    assert "<!-- page 1 -->" in (out / "scan.md").read_text()


def test_single_json_file_output(docs: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    run = ocr(str(docs["scan.png"]), "-e", "fake", "-o", str(target))
    assert run.returncode == 0, run.stderr
    assert json.loads(target.read_text())["kind"] == "png"


def test_partial_failure_exit_code(docs: dict[str, Path]) -> None:
    run = ocr(str(docs["holes.pdf"]), "-e", "fake", "--text-layer", "never")
    assert run.returncode == 11
    assert "page 2" in run.stderr and "<!-- page 3 -->" in run.stdout


@pytest.mark.parametrize("order", ["holes first", "locked first"])
def test_an_unreadable_document_outranks_failed_pages_in_any_order(docs: dict[str, Path], order: str) -> None:
    files = [str(docs["holes.pdf"]), str(docs["locked.pdf"])]
    run = ocr(*(files if order == "holes first" else files[::-1]), "-e", "fake", "--text-layer", "never")
    assert run.returncode == 9, run.stderr


def test_usage_errors(docs: dict[str, Path], tmp_path: Path) -> None:
    missing = ocr(str(tmp_path / "nope.pdf"), "-e", "fake")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    bad_pages = ocr(str(docs["letter.pdf"]), "-e", "fake", "--pages", "9")
    assert bad_pages.returncode == 2 and "2 page" in bad_pages.stderr
    clobber = ocr(str(docs["scan.png"]), "-e", "fake", "-o", str(docs["letter.pdf"]))
    assert clobber.returncode == 2 and "must be a folder" in clobber.stderr
    assert docs["letter.pdf"].read_bytes().startswith(b"%PDF")  # nothing lost


def test_never_overwrites_an_input(tmp_path: Path) -> None:
    page = tmp_path / "page.md"  # a PNG that happens to be named *.md: sniffed by content, so it is read
    page.write_bytes(make.image_bytes(make.marked_image((200, 100)), "PNG"))
    run = ocr(str(page), "-e", "fake", "-o", str(page))
    assert run.returncode == 2 and "Refusing to overwrite the input" in run.stderr
    assert page.read_bytes().startswith(b"\x89PNG")


def test_an_engine_that_cannot_run_here_exits_10_with_the_install_hint(docs: dict[str, Path]) -> None:
    env_run = subprocess.run(
        [sys.executable, "-m", "gnosis_ocr", "ocr", str(docs["scan.png"]), "--engine", "tesseract"],
        env={**os.environ, "PYTHONPATH": str(ROOT), "GNOSIS_TESSERACT_LANG": "klingon", "COLUMNS": "200"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert env_run.returncode == 10, env_run.stderr
    assert "klingon" in env_run.stderr and "pip install" in env_run.stderr and "Traceback" not in env_run.stderr
