"""How many hub requests does a *second* start make? The usual ways of loading a cached model vs gnosis-ocr.

    .venv/bin/python -m bench.offline_bench

A tiny Qwen2.5-VL is warmed once into a cache through a local hub-compatible server; then each loading recipe
runs in a fresh process (so huggingface_hub reads its environment as a real start would) and the server counts
the requests it receives. Prints a table.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.hubserver import LocalHub
from tests.support.tinymodel import tiny_model_dir

from gnosis_ocr.modelcache import ModelCache

REPO = "bench/tiny-qwen2.5-vl"
ROOT = Path(__file__).resolve().parents[1]

LOAD_BY_ID = """
import sys
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
kw = dict(cache_dir=sys.argv[2], local_files_only=sys.argv[3] == "1")
Qwen2_5_VLForConditionalGeneration.from_pretrained(sys.argv[1], **kw)
AutoTokenizer.from_pretrained(sys.argv[1], **kw)
"""

LOAD_OURS = """
import os, sys
from gnosis_ocr.modelcache import ModelCache
from gnosis_ocr.modelcache.loader import load_pretrained, load_processor_parts
from gnosis_ocr.modelcache.offline import prepare_environment
prepare_environment(os.environ, offline=False)
cache = ModelCache(__import__("pathlib").Path(sys.argv[2]), endpoint=os.environ["HF_ENDPOINT"])
resolved = cache.resolve(sys.argv[1], mode="auto")
from transformers import Qwen2_5_VLForConditionalGeneration
load_pretrained(resolved, Qwen2_5_VLForConditionalGeneration)
load_processor_parts(resolved)
"""


def run_case(hub: LocalHub, code: str, args: list[str], env: dict[str, str]) -> tuple[int, float, bool]:
    hub.reset_counters()
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, cwd=ROOT, capture_output=True, timeout=600, check=False
    )
    return hub.request_count, time.monotonic() - started, proc.returncode == 0


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="gnosis-offline-bench-") as tmp, LocalHub() as hub:
        model = tiny_model_dir(Path(tmp) / "model")
        hub.add_repo(REPO, model)
        root = Path(tmp) / "cache" / "huggingface"
        ModelCache(root, endpoint=hub.endpoint).warm(REPO)
        hub_dir = str(root / "hub")
        base = {
            **os.environ,
            "HF_ENDPOINT": hub.endpoint,
            "HF_HOME": str(Path(tmp) / "home"),
            "PYTHONPATH": str(ROOT),
            "TRANSFORMERS_VERBOSITY": "error",
        }
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
            base.pop(var, None)
        cases = [
            ("from_pretrained(repo id), no flags", LOAD_BY_ID, [REPO, hub_dir, "0"], base),
            ("from_pretrained(repo id), local_files_only=True", LOAD_BY_ID, [REPO, hub_dir, "1"], base),
            (
                "from_pretrained(repo id), HF_HUB_OFFLINE=1",
                LOAD_BY_ID,
                [REPO, hub_dir, "0"],
                {**base, "HF_HUB_OFFLINE": "1"},
            ),
            ("gnosis-ocr resolve + load (mode auto)", LOAD_OURS, [REPO, str(root)], base),
        ]
        rows = []
        for name, code, args, env in cases:
            requests, seconds, ok = run_case(hub, code, args, env)
            rows.append((name, requests, seconds, ok))
    print(f"Second start of a cached tiny Qwen2.5-VL (model + tokenizer), hub on loopback, {os.cpu_count()} cores")
    print(f"{'recipe':<52} {'hub requests':>12} {'wall s':>8}  loaded")
    for name, requests, seconds, ok in rows:
        print(f"{name:<52} {requests:>12} {seconds:>8.2f}  {'yes' if ok else 'NO'}")
    print("A hub that is down turns each request into connection errors and retries; ours makes none.")


if __name__ == "__main__":
    main()
