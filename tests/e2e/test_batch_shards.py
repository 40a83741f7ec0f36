"""The acceptance test of batch OCR: ``gnosis-ocr batch gs://... gs://...`` run as the three tasks of a Cloud Run
Job at once against fake-gcs-server, then one task SIGKILLed midway and run again.

What happened is read from the bucket, not from the tool: the bucket keeps every version of every object, so
"written once" is a count of generations, and "untouched" is the same generation before and after. The tasks'
log lines say which task read which document; the test checks them against the sharding rule it computes itself.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.documents import make
from tests.support.objectstores import FakeGcs, child_env

ROOT = Path(__file__).resolve().parents[2]
COUNT = 3


def documents() -> dict[str, tuple[bytes, int]]:
    """30 documents in nested folders: relative path -> (bytes, pages)."""
    docs: dict[str, tuple[bytes, int]] = {}
    for n in range(20):
        pages = 1 + n % 3
        lines = [[f"Document {n}, page {p}: the river ran slowly past the old mill."] for p in range(1, pages + 1)]
        docs[f"letters/{1900 + n % 4}/letter {n:02d}.pdf"] = (make.text_pdf(lines), pages)
    for n in range(10):
        image = make.image_bytes(make.marked_image((320 + 16 * n, 240)), "PNG")
        docs[f"scans/box-{n % 2}/scan-{n:02d}{' é' if n == 7 else ''}.png"] = (image, 1)
    return docs


def documented_rule(path: str, count: int) -> int:
    return int.from_bytes(hashlib.sha256(path.encode("utf-8")).digest()[:8], "big") % count


def _request(method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, no proxy
    with opener.open(request, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read() or b"{}")
        return answer


def generations(gcs: FakeGcs, bucket: str, prefix: str) -> dict[str, list[int]]:
    """Every object under ``prefix`` (relative name) -> the generations it has had, oldest first."""
    found: dict[str, list[int]] = {}
    token = ""
    while True:
        query = urllib.parse.urlencode({"prefix": prefix + "/", "versions": "true", "pageToken": token})
        page = _request("GET", f"{gcs.endpoint}/storage/v1/b/{bucket}/o?{query}")
        for item in page.get("items", []):
            found.setdefault(item["name"][len(prefix) + 1 :], []).append(int(item["generation"]))
        token = page.get("nextPageToken", "")
        if not token:
            return {name: sorted(gens) for name, gens in found.items()}


def live(gcs: FakeGcs, bucket: str, prefix: str) -> dict[str, int]:
    """The current objects under ``prefix``: relative name -> generation."""
    query = urllib.parse.urlencode({"prefix": prefix + "/"})
    page = _request("GET", f"{gcs.endpoint}/storage/v1/b/{bucket}/o?{query}")
    return {item["name"][len(prefix) + 1 :]: int(item["generation"]) for item in page.get("items", [])}


@pytest.fixture
def collection(gcs: FakeGcs) -> tuple[str, dict[str, tuple[bytes, int]]]:
    """A versioned bucket with the documents under ``in/``."""
    bucket = f"batch-{uuid.uuid4().hex[:12]}"
    _request(
        "POST", f"{gcs.endpoint}/storage/v1/b?project={gcs.project}", {"name": bucket, "versioning": {"enabled": True}}
    )
    docs = documents()
    fs = gcs.fs()
    for name, (data, _) in docs.items():
        fs.pipe_file(f"{bucket}/in/{name}", data)
    return bucket, docs


def start_task(gcs: FakeGcs, bucket: str, dst: str, index: int, tmp_path: Path) -> subprocess.Popen[str]:
    env = child_env(
        gcs.env(),
        {
            "CLOUD_RUN_TASK_INDEX": str(index),
            "CLOUD_RUN_TASK_COUNT": str(COUNT),
            "JOB_COMPLETION_INDEX": None,
            "GNOSIS_ENGINE": "fake",
            "MODEL_CACHE_PATH": str(tmp_path / "cache"),
            "PYTHONPATH": str(ROOT),
            "COLUMNS": "200",
        },
    )
    argv = [sys.executable, "-m", "gnosis_ocr", "batch", f"gs://{bucket}/in", f"gs://{bucket}/{dst}"]
    argv += ["--option", "token=anon", "--text-layer", "never"]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    stdout, stderr = proc.communicate(timeout=120)
    return proc.returncode, stdout, stderr


def read_in_log(stderr: str, index: int) -> list[str]:
    """The documents a task says it read, from its plain log lines ``batch: task i/3: [k/n] <path>: ...``."""
    prefix = f"batch: task {index}/{COUNT}: ["
    return [line.split("] ", 1)[1].rsplit(": ", 1)[0] for line in stderr.splitlines() if line.startswith(prefix)]


def results_of(docs: dict[str, tuple[bytes, int]]) -> set[str]:
    return {f"{name}{suffix}" for name in docs for suffix in (".md", ".json")}


def test_three_tasks_share_a_bucket_and_a_killed_task_resumes(
    gcs: FakeGcs, collection: tuple[str, dict[str, tuple[bytes, int]]], tmp_path: Path
) -> None:
    bucket, docs = collection
    shards = {i: sorted(n for n in docs if documented_rule(n, COUNT) == i) for i in range(COUNT)}
    assert all(shards.values())  # every task has work

    # --- three tasks at once: every document read by its own task, each result written exactly once
    procs = [start_task(gcs, bucket, "out", i, tmp_path) for i in range(COUNT)]
    for index, proc in enumerate(procs):
        code, stdout, stderr = finish(proc)
        assert code == 0, stderr
        mine = len(shards[index])
        assert stdout.startswith(f"batch: task {index}/{COUNT}: {mine} documents: {mine} done, 0 skipped"), stdout
        assert read_in_log(stderr, index) == shards[index]

    written = generations(gcs, bucket, "out")
    assert set(written) == results_of(docs)
    assert all(len(gens) == 1 for gens in written.values()), {n: g for n, g in written.items() if len(g) > 1}
    fs = gcs.fs()
    for name, (_, pages) in docs.items():
        result = json.loads(fs.cat_file(f"{bucket}/out/{name}.json"))
        assert result["document"] == name and result["engine"]["name"] == "fake"
        assert [p["page"] for p in result["pages"]] == list(range(1, pages + 1))
        assert all(p["source"] == "ocr" and p["error"] is None for p in result["pages"])
        assert fs.cat_file(f"{bucket}/out/{name}.md").decode().count("<!-- page ") == pages

    # --- the task with the most documents, SIGKILLed once it has finished two
    victim = max(shards, key=lambda i: len(shards[i]))
    shard = shards[victim]
    proc = start_task(gcs, bucket, "out2", victim, tmp_path)
    deadline = time.monotonic() + 60
    while sum(1 for n in live(gcs, bucket, "out2") if n.endswith(".json")) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the task wrote no results"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert finish(proc)[0] == -signal.SIGKILL

    at_kill = live(gcs, bucket, "out2")
    done = sorted(n.removesuffix(".json") for n in at_kill if n.endswith(".json"))
    assert 2 <= len(done) < len(shard), "the kill was meant to land midway"
    assert done == shard[: len(done)] and all(f"{n}.md" in at_kill for n in done)  # in order, .md before .json

    # --- run again, while the other two tasks run for the first time (a retried task among its peers)
    rerun = start_task(gcs, bucket, "out2", victim, tmp_path)
    others = [start_task(gcs, bucket, "out2", i, tmp_path) for i in range(COUNT) if i != victim]
    code, stdout, stderr = finish(rerun)
    assert code == 0, stderr
    rest = len(shard) - len(done)
    assert stdout.startswith(f"batch: task {victim}/{COUNT}: {len(shard)} documents: {rest} done, {len(done)} skipped")
    assert read_in_log(stderr, victim) == shard[len(done) :]  # only what was left
    assert all(finish(p)[0] == 0 for p in others)

    final = generations(gcs, bucket, "out2")
    assert set(final) == results_of(docs)  # the set is complete
    for name in done:  # what was written before the kill is untouched
        assert final[f"{name}.md"] == [at_kill[f"{name}.md"]] and final[f"{name}.json"] == [at_kill[f"{name}.json"]]
    assert all(len(final[f"{n}.json"]) == 1 for n in docs)  # no document was written twice
    twice = [n for n, gens in final.items() if len(gens) > 1]
    assert len(twice) <= 1 and all(n.endswith(".md") and n in at_kill for n in twice)  # at most the .md cut off
