"""Pages per second through the remote engine (``vllm serve`` on loopback) against the in-process vLLM engine, on
the same CPU, the same model and the same pages, one after the other (issue 13).

    flock /tmp/gnosis-heavy.lock .venv-vllm/bin/python -m bench.remote_bench [--pages 64] [--tokens 64]
                                                                            [--seqs 16] [--json-out FILE]

Runs in the vLLM virtualenv (``scripts/dev vllm-setup``): the in-process engine needs vLLM importable. The tiny
Qwen2.5-VL of the tests (random weights) is built, warmed into a cache in a temporary folder from a loopback hub,
and read offline by both: in-process as ``VllmEngine`` (the ``in-process`` driver, as on CPU), remote as vLLM's
own OpenAI server started on 127.0.0.1 with the same ``--max-num-seqs`` and the engine's ``capacity`` equal to it.
Every page decodes exactly ``--tokens`` tokens (``ignore_eos``), so both do the same work; 4 pages warm each up
first. All pages are submitted at once and the clock runs until the last one lands. What the remote column adds
is the HTTP hop: PNG encoding and base64 of each page, JSON, the server's own chat-template and image processing,
and vLLM's API server process beside its engine core. On a GPU, where a page takes seconds, that overhead is a
few milliseconds a page; here, with a model of ~0.3M parameters, it is most of the cost, so the ratio is the worst
case, not the GPU's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw


def pages(n: int) -> list[Any]:
    from gnosis_ocr.documents.model import Page

    out = []
    for i in range(1, n + 1):
        noise = random.Random(i).randbytes(320 * 240 * 3)  # noqa: S311 (test data)
        image = Image.frombytes("RGB", (320, 240), noise)
        ImageDraw.Draw(image).text((10, 100), f"Invoice {i}: total {17 * i}", fill="black")
        out.append(Page(number=i, image=image))
    return out


def timed(engine: Any, batch: list[Any]) -> tuple[float, int, int]:
    """Seconds for ``batch`` submitted at once, pages ok, tokens decoded."""
    began = time.perf_counter()
    futures = [engine.submit(page) for page in batch]
    results = [f.result(timeout=600) for f in futures]
    seconds = time.perf_counter() - began
    ok = [r for r in results if r.ok]
    return seconds, len(ok), sum(int(r.meta.get("new_tokens", 0)) for r in ok)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--seqs", type=int, default=16, help="vLLM max-num-seqs, and the remote engine's capacity")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    REPO = "gnosis-test/tiny-qwen2.5-vl"  # tests/conftest.py names it so (it imports pytest, which this venv lacks)
    from tests.support.tinymodel import tiny_model_dir
    from tests.support.vllmenv import warm_cache
    from tests.support.vllmserve import VllmServer

    from gnosis_ocr.engines.profiles import GENERIC_QWEN25_VL
    from gnosis_ocr.engines.remote import RemoteEngine
    from gnosis_ocr.engines.vllm import VllmEngine
    from gnosis_ocr.modelcache import ModelCache

    profile = replace(GENERIC_QWEN25_VL, max_tokens=args.tokens, max_pixels=28 * 28 * 16, ignore_eos=True)
    batch, warmup = pages(args.pages), pages(4)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gnosis-remote-bench-") as tmp:
        base = Path(tmp)
        root, endpoint, _ = warm_cache(REPO, tiny_model_dir(base / "tiny"), base / "huggingface")
        cache = ModelCache(root, endpoint=endpoint)
        snapshot = cache.resolve(REPO, mode="offline").path

        began = time.perf_counter()
        local = VllmEngine(
            cache,
            REPO,
            mode="offline",
            profile=profile,
            dtype="float32",
            max_model_len=4096,
            max_num_seqs=args.seqs,
            driver="in-process",
        )
        local.load()
        load = time.perf_counter() - began
        timed(local, warmup)
        seconds, ok, tokens = timed(local, batch)
        local.close()
        rows.append({"engine": "vllm in-process", "load_s": load, "seconds": seconds, "ok": ok, "tokens": tokens})

        python = Path(sys.executable)
        began = time.perf_counter()
        server = VllmServer(python, snapshot, REPO, base / "vllm.log", max_num_seqs=args.seqs)
        try:
            remote = RemoteEngine(server.url, model=REPO, profile=profile, capacity=args.seqs, startup_wait=0)
            remote.load()
            load = time.perf_counter() - began
            timed(remote, warmup)
            seconds, ok, tokens = timed(remote, batch)
            remote.close()
        finally:
            server.stop()
        rows.append({"engine": "remote (vllm serve)", "load_s": load, "seconds": seconds, "ok": ok, "tokens": tokens})

    print(
        f"{args.pages} pages x {args.tokens} tokens, max-num-seqs {args.seqs}, tiny Qwen2.5-VL, {os.cpu_count()} CPUs"
    )
    print(f"{'engine':<22}{'start s':>9}{'pages ok':>10}{'seconds':>9}{'pages/s':>9}{'tokens/s':>10}")
    for row in rows:
        row["pages_per_s"] = row["ok"] / row["seconds"]
        print(
            f"{row['engine']:<22}{row['load_s']:>9.1f}{row['ok']:>10}{row['seconds']:>9.2f}"
            f"{row['pages_per_s']:>9.1f}{row['tokens'] / row['seconds']:>10.0f}"
        )
    print(f"remote / in-process pages/s: {rows[1]['pages_per_s'] / rows[0]['pages_per_s']:.2f}")
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":  # vLLM may spawn; the guard keeps a child from running the benchmark again
    sys.exit(main())
