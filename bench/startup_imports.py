"""Where a VLM start's time goes before any weight is read: the interpreter, torch, transformers, the Qwen2.5-VL
modeling code and building the real-config model on the meta device, each in a fresh interpreter (issue 11).

    .venv/bin/python -m bench.startup_imports [--runs 3]

Each row runs its statement in a new ``python -c`` (so nothing is imported already) and prints the median and the
minimum wall time of ``--runs``; each row includes the rows above it where it says ``+``. Nothing is read from the
cache and nothing is downloaded: the model is built on the meta device from ``bench.realshape``'s copy of the real
config. Subtract a row from the next for that step's own cost.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STEPS: dict[str, str] = {
    "interpreter": "pass",
    "import torch": "import torch",
    "+ transformers": "import torch, transformers",
    "+ Qwen2.5-VL class": "import torch, transformers\nfrom transformers import Qwen2_5_VLForConditionalGeneration",
    "gnosis_ocr.engines.nanonets alone": "import gnosis_ocr.engines.nanonets",
    "+ model on meta (real config)": (
        "import torch\n"
        "from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration\n"
        "from bench.realshape import NANONETS_OCR_S_CONFIG\n"
        "config = Qwen2_5_VLConfig(**NANONETS_OCR_S_CONFIG)\n"
        "with torch.device('meta'):\n"
        "    Qwen2_5_VLForConditionalGeneration._from_config(config, torch_dtype=torch.bfloat16)\n"
    ),
}


def timed(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per row (default 3)")
    args = parser.parse_args(argv)
    print("| step (fresh interpreter) | median s | min s |")
    print("|---|---|---|")
    for name, code in STEPS.items():
        runs = [timed(code) for _ in range(max(1, args.runs))]
        print(f"| {name} | {statistics.median(runs):.2f} | {min(runs):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
