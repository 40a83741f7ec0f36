"""Batch OCR over local folders with the fake engine: shards, result layout, resume, --force, failures, usage."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gnosis_ocr.documents.model import DocumentLimits
from gnosis_ocr.errors import ConfigError
from gnosis_ocr.jobs.batch import (
    BatchReport,
    LocalTree,
    Shard,
    list_batch,
    plan_batch,
    resolve_shard,
    run_batch,
    shard_of,
)
from gnosis_ocr.jobs.pipeline import OcrOptions
from tests.documents import make
from tests.support.fakeengine import FakeEngine

ROOT = Path(__file__).resolve().parents[2]
SMALL = OcrOptions(text_layer="never", limits=DocumentLimits(target_pixels=120_000, min_long_side=256))
NAMES = [f"box{b}/folder {f}/scan-{n:03d}.pdf" for b in range(4) for f in range(5) for n in range(10)]


def documented_rule(path: str, count: int) -> int:
    """The rule as --help states it, written out independently of the code under test."""
    return int.from_bytes(hashlib.sha256(path.encode("utf-8")).digest()[:8], "big") % count


# ------------------------------------------------------------------------------------------------------ shards


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_every_document_lands_in_exactly_one_shard(count: int) -> None:
    shards = [Shard(i, count) for i in range(count)]
    for name in NAMES:
        owners = [s.index for s in shards if s.owns(name)]
        assert owners == [documented_rule(name, count)]
    many = [f"archive/{n // 100:02d}/doc-{n:05d}.pdf" for n in range(5000)]
    sizes = [sum(1 for name in many if s.owns(name)) for s in shards]
    assert sum(sizes) == len(many)
    fair = len(many) / count
    assert all(abs(size - fair) <= 0.1 * fair for size in sizes), sizes  # balanced: each within 10% of its share


def test_assignment_is_stable_when_documents_are_added() -> None:
    before = {name: shard_of(name, 3) for name in NAMES}
    grown = sorted([*NAMES, "new/first.pdf", "aaa.png", "box0/folder 0/scan-000a.pdf"])
    after = {name: shard_of(name, 3) for name in grown}
    assert all(after[name] == owner for name, owner in before.items())
    # the same in another process (no per-process hash seed involved)
    code = "import sys; from gnosis_ocr.jobs.batch import shard_of; print(shard_of(sys.argv[1], 3))"
    other = subprocess.run([sys.executable, "-c", code, NAMES[7]], capture_output=True, text=True, check=True)
    assert int(other.stdout) == before[NAMES[7]]


@pytest.mark.parametrize(
    ("env", "index", "count", "expected"),
    [
        ({}, None, None, (0, 1)),
        ({"CLOUD_RUN_TASK_INDEX": "2", "CLOUD_RUN_TASK_COUNT": "5"}, None, None, (2, 5)),
        ({"CLOUD_RUN_TASK_INDEX": "2", "CLOUD_RUN_TASK_COUNT": "5"}, 4, None, (4, 5)),  # options win
        ({"CLOUD_RUN_TASK_INDEX": "2", "CLOUD_RUN_TASK_COUNT": "5"}, 1, 2, (1, 2)),
        ({"JOB_COMPLETION_INDEX": "3"}, None, 4, (3, 4)),
        ({"CLOUD_RUN_TASK_INDEX": "1", "JOB_COMPLETION_INDEX": "3", "CLOUD_RUN_TASK_COUNT": "2"}, None, None, (1, 2)),
        ({"CLOUD_RUN_TASK_COUNT": "1"}, None, None, (0, 1)),
        ({}, 0, 1, (0, 1)),
    ],
)
def test_the_shard_comes_from_options_then_cloud_run_then_kubernetes(
    env: dict[str, str], index: int | None, count: int | None, expected: tuple[int, int]
) -> None:
    shard = resolve_shard(env, index=index, count=count)
    assert (shard.index, shard.count) == expected


@pytest.mark.parametrize(
    ("env", "index", "count", "message"),
    [
        ({"CLOUD_RUN_TASK_INDEX": "3", "CLOUD_RUN_TASK_COUNT": "3"}, None, None, "Task index 3 is not below"),
        ({"JOB_COMPLETION_INDEX": "3"}, None, None, "JOB_COMPLETION_INDEX=3 is set but the task count is not"),
        ({}, 1, None, "--task-index is set but the task count is not"),
        ({}, None, 4, "The task count is 4 (--task-count) but no task index"),
        ({"CLOUD_RUN_TASK_INDEX": "one", "CLOUD_RUN_TASK_COUNT": "3"}, None, None, "'one' is not a whole number"),
        ({}, 0, 0, "at least 1"),
    ],
)
def test_a_shard_that_makes_no_sense_is_a_config_error(
    env: dict[str, str], index: int | None, count: int | None, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_shard(env, index=index, count=count)
    assert message in caught.value.message
    assert "CLOUD_RUN_TASK_INDEX" in (caught.value.hint or "")


def test_the_plan_keeps_this_shards_documents_in_order_and_skips_the_done() -> None:
    sources = {"b/two.PDF": 10, "a/one.png": 10, "notes.txt": 1, "a/one.png.json": 5, "c/three.tiff": 10}
    whole = plan_batch(sources, [], Shard())
    assert whole.total == 3 and [d.path for d in whole.todo] == ["a/one.png", "b/two.PDF", "c/three.tiff"]
    resumed = plan_batch(sources, ["a/one.png.md", "a/one.png.json", "b/two.PDF.md"], Shard())
    assert resumed.skipped == ("a/one.png",)  # a .md without its .json is not done
    assert [d.path for d in resumed.todo] == ["b/two.PDF", "c/three.tiff"]
    forced = plan_batch(sources, ["a/one.png.json"], Shard(), force=True)
    assert forced.skipped == () and len(forced.todo) == 3


# ------------------------------------------------------------------------------------------------ runs on disk


def ocr_shard(
    src: Path, out: Path, engine: FakeEngine, shard: Shard, *, options: OcrOptions = SMALL, force: bool = False
) -> BatchReport:
    source, destination = LocalTree(src), LocalTree(out)
    plan = list_batch(source, destination, shard, force=force)
    return run_batch(plan, source, destination, engine, options=options)


@pytest.fixture
def collection(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    files = {
        "a/b/scan.pdf": make.text_pdf([["first page"], ["second page"]]),
        "a/photo.JPG": make.image_bytes(make.marked_image((300, 200)), "JPEG"),
        "c/broken.pdf": make.hopeless_pdf(),
        "d/scan two.png": make.image_bytes(make.marked_image((200, 300)), "PNG"),
        "readme.txt": b"not a document",
    }
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    return src


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_results_lie_beside_their_names_and_a_broken_document_stops_nothing(collection: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    engine = FakeEngine()
    report = ocr_shard(collection, out, engine, Shard(), options=SMALL)

    assert sorted(_snapshot(out)) == [
        "a/b/scan.pdf.json",
        "a/b/scan.pdf.md",
        "a/photo.JPG.json",
        "a/photo.JPG.md",
        "d/scan two.png.json",
        "d/scan two.png.md",
    ]  # nothing for the broken document, no temp files left behind
    assert [o.path for o in report.outcomes] == ["a/b/scan.pdf", "a/photo.JPG", "c/broken.pdf", "d/scan two.png"]
    assert (report.done, report.failed, report.pages, report.ok) == (3, 1, 4, False)
    broken = report.outcomes[2]
    assert broken.error is not None and "broken.pdf is a damaged PDF" in broken.error
    assert report.errors() == [("c/broken.pdf", None, broken.error)]

    doc = json.loads((out / "a/b/scan.pdf.json").read_text())
    assert doc["document"] == "a/b/scan.pdf" and doc["engine"]["name"] == "fake"
    assert [p["page"] for p in doc["pages"]] == [1, 2] and all(p["error"] is None for p in doc["pages"])
    markdown = (out / "a/b/scan.pdf.md").read_text()
    assert markdown.startswith("<!-- page 1 -->") and "<!-- page 2 -->" in markdown
    assert report.summary().startswith(
        "batch: task 0/1: 4 documents: 3 done, 0 skipped (already done), 1 failed, 4 pages in "
    )


def test_a_rerun_skips_done_documents_without_reading_them_or_their_results(collection: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    ocr_shard(collection, out, FakeEngine(), Shard(), options=SMALL)
    # were a done document or its result read again, these would fail it
    (collection / "a/b/scan.pdf").write_bytes(b"garbage now")
    (out / "a/photo.JPG.json").write_text("not json")
    before = _snapshot(out)

    engine = FakeEngine()
    again = ocr_shard(collection, out, engine, Shard(), options=SMALL)

    assert again.skipped == ("a/b/scan.pdf", "a/photo.JPG", "d/scan two.png")
    assert [o.path for o in again.outcomes] == ["c/broken.pdf"]  # a failed document is tried again
    assert engine.calls == []
    assert _snapshot(out) == before


def test_a_document_cut_off_before_its_json_is_done_again(collection: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    ocr_shard(collection, out, FakeEngine(), Shard(), options=SMALL)
    (out / "a/photo.JPG.json").unlink()  # as if killed between the two writes
    (out / "a/photo.JPG.md").write_text("stale")

    again = ocr_shard(collection, out, FakeEngine(), Shard(), options=SMALL)

    assert [o.path for o in again.outcomes] == ["a/photo.JPG", "c/broken.pdf"]
    assert (out / "a/photo.JPG.md").read_text().startswith("<!-- page 1 -->")
    assert json.loads((out / "a/photo.JPG.json").read_text())["document"] == "a/photo.JPG"


def test_force_redoes_the_whole_shard(collection: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    ocr_shard(collection, out, FakeEngine(), Shard(), options=SMALL)
    engine = FakeEngine()
    forced = ocr_shard(collection, out, engine, Shard(), options=SMALL, force=True)
    assert forced.skipped == () and forced.done == 3
    assert sum(len(call) for call in engine.calls) == 4  # every page of every readable document, once


def test_shards_together_cover_the_collection_once(collection: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    reports = [ocr_shard(collection, out, FakeEngine(), Shard(i, 3), options=SMALL) for i in range(3)]
    seen = [o.path for r in reports for o in r.outcomes]
    assert sorted(seen) == ["a/b/scan.pdf", "a/photo.JPG", "c/broken.pdf", "d/scan two.png"]
    for report in reports:
        assert all(documented_rule(o.path, 3) == report.shard.index for o in report.outcomes)


def test_failed_pages_are_written_and_reported(collection: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = ocr_shard(collection, out, FakeEngine(fail_pages=frozenset({2})), Shard(), options=SMALL)
    scan = report.outcomes[0]
    assert scan.path == "a/b/scan.pdf" and scan.written and scan.failed_pages == ((2, "fake engine failed here"),)
    assert ("a/b/scan.pdf", 2, "fake engine failed here") in report.errors()
    pages = json.loads((out / "a/b/scan.pdf.json").read_text())["pages"]
    assert [p["error"] for p in pages] == [None, "fake engine failed here"]
    assert "4 pages (1 failed)" in report.summary()


def test_a_page_selection_past_a_documents_end_fails_that_document_only(collection: Path, tmp_path: Path) -> None:
    options = OcrOptions(pages="2", text_layer="never", limits=SMALL.limits)
    report = ocr_shard(collection, tmp_path / "out", FakeEngine(), Shard(), options=options)
    assert [(o.path, o.pages, o.error is None) for o in report.outcomes] == [
        ("a/b/scan.pdf", 1, True),
        ("a/photo.JPG", 0, False),
        ("c/broken.pdf", 0, False),
        ("d/scan two.png", 0, False),
    ]


# ------------------------------------------------------------------------------------------------- the command


def _command(*args: str, env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUD_RUN_", "JOB_COMPLETION_"))}
    full = {**base, "COLUMNS": "200", "PYTHONPATH": str(ROOT), "GNOSIS_ENGINE": "fake", **(env or {})}
    return [sys.executable, "-m", "gnosis_ocr", "batch", *args], full


def batch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv, full = _command(*args, env=env)
    return subprocess.run(argv, env=full, capture_output=True, text=True, timeout=120)


def test_the_command_reports_each_document_sums_up_and_exits_11_on_failures(collection: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {"CLOUD_RUN_TASK_INDEX": "0", "CLOUD_RUN_TASK_COUNT": "1", "GNOSIS_TARGET_PIXELS": "120000"}
    run = batch(str(collection), str(out), "--errors-to", str(out / "_errors"), env=env)

    assert run.returncode == 11, run.stderr
    summary, *errors = run.stdout.splitlines()
    assert summary.startswith("batch: task 0/1: 4 documents: 3 done, 0 skipped (already done), 1 failed, 4 pages in")
    assert len(errors) == 1 and errors[0].startswith("  c/broken.pdf: ")
    lines = [line for line in run.stderr.splitlines() if line.startswith("batch: task 0/1: [")]
    assert [line.split("] ")[1].split(":")[0] for line in lines] == [
        "a/b/scan.pdf",
        "a/photo.JPG",
        "c/broken.pdf",
        "d/scan two.png",
    ]  # plain lines, one per document, when stderr is not a terminal
    report = json.loads((out / "_errors/task-0-of-1.json").read_text())
    assert report["failed"] == 1 and report["errors"][0]["document"] == "c/broken.pdf"
    assert (out / "d/scan two.png.json").is_file()

    (collection / "c/broken.pdf").unlink()
    rerun = batch(str(collection), str(out), "--errors-to", str(out / "_errors"), env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.startswith("batch: task 0/1: 3 documents: 0 done, 3 skipped (already done), 0 failed")
    assert json.loads((out / "_errors/task-0-of-1.json").read_text())["errors"] == []


def test_bad_usage_exits_2_with_a_clear_message_before_any_work(collection: Path, tmp_path: Path) -> None:
    src, out = str(collection), str(tmp_path / "out")
    cases: list[tuple[list[str], dict[str, str], str]] = [
        ([src, out], {"CLOUD_RUN_TASK_INDEX": "3", "CLOUD_RUN_TASK_COUNT": "3"}, "Task index 3 is not below"),
        ([str(tmp_path / "nowhere"), out], {}, "does not exist or is not a folder"),
        ([src, out, "--pages", "two"], {}, "Cannot read the page selection 'two'"),
    ]
    procs = []
    for args, env, _ in cases:  # all at once: each pays the interpreter's start-up
        argv, full = _command(*args, env=env)
        procs.append(subprocess.Popen(argv, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc, (args, _, message) in zip(procs, cases, strict=True):
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2, (args, stderr)
        assert message in " ".join(stderr.split()), (args, stderr)
    assert not (tmp_path / "out").exists()


def test_a_src_without_documents_or_a_bad_shard_is_refused_before_listing_dst(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"holds no document \(1 file\(s\), none ending in \.pdf"):
        list_batch(LocalTree(tmp_path / "empty"), LocalTree(tmp_path / "out"), Shard())
    with pytest.raises(ConfigError, match="does not exist or is not a folder"):
        list_batch(LocalTree(tmp_path / "empty" / "notes.txt"), LocalTree(tmp_path / "out"), Shard())


def test_results_that_cannot_be_written_exit_12_not_as_bad_usage(collection: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where DST's folder should be")
    run = batch(str(collection), str(blocker / "out"), env={"GNOSIS_TARGET_PIXELS": "120000"})
    assert run.returncode == 12, run.stderr
    assert "Cannot write" in " ".join(run.stderr.split())
