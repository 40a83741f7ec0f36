#!/usr/bin/env bash
# The GPU benchmark at the real shape, on the lent GPU machine, in one bounded run (~8 minutes).
#
# That machine (../shared/DESIGN.md §7): Python 3.12 with CUDA torch, transformers, safetensors, tokenizers,
# huggingface_hub and Pillow; no vLLM, no network, at most 64 MiB carried. So the 7.5 GB checkpoint is built
# there (bench/realshape.py, seconds on the GPU), gnosis-ocr runs from src/ on PYTHONPATH, and the one pure-Python
# package of its import path the image may lack (prometheus_client) travels in .work/bench-deps.
#
#   here, once:   bash bench/gpu_run.sh --prepare           (fills .work/bench-deps from .venv, ~0.7 MB)
#   device tool:  run(command="bash bench/gpu_run.sh", carry=[".work/bench-deps"], timeout_s=540)
#
# Writes to $OUT (else .work/gpu-out): gpu_bench.txt (the table), gpu_bench.json, gpu_bench.log (progress and
# warnings), env.txt (nvidia-smi, versions). Knobs: GPU_BENCH_SECONDS (hard limit, default 470), TOKENS (800),
# ROW_SECONDS (40), BATCHES (1,4,8,16), GPU_BENCH_CACHE (a cache root to keep; default a temp one, removed),
# DEVICE/SHAPE (cuda/real; DEVICE=cpu SHAPE=tiny TOKENS=16 PYTHON=.venv/bin/python rehearses it here).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
    site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    rm -rf .work/bench-deps
    mkdir -p .work/bench-deps
    cp -r "$site/prometheus_client" .work/bench-deps/
    find .work/bench-deps -name __pycache__ -prune -exec rm -rf {} +
    du -sh .work/bench-deps
    exit 0
fi

out=${OUT:-$PWD/.work/gpu-out}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD/src:$PWD:$PWD/.work/bench-deps${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

limit=${GPU_BENCH_SECONDS:-470}
{
    nvidia-smi || true
    "$py" -c 'import sys, torch, transformers; print(sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available()); print("transformers", transformers.__version__)'
    "$py" -c 'import vllm; print("vllm", vllm.__version__)' 2>&1 | tail -n 1
    df -h /tmp | tail -n 1
} >"$out/env.txt" 2>&1 || true
cat "$out/env.txt"

device=${DEVICE:-cuda} # DEVICE=cpu SHAPE=tiny TOKENS=16: the same script as a CPU rehearsal
if [[ "$device" == cuda* ]] && ! "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_run: no CUDA device visible to $py; nothing measured" | tee "$out/gpu_bench.txt"
    exit 2
fi

args=(--device "$device" --shape "${SHAPE:-real}" --tokens "${TOKENS:-800}" --pages 16 --batches "${BATCHES:-1,4,8,16}"
    --row-seconds "${ROW_SECONDS:-40}" --budget-s $((limit - 60)) --json "$out/gpu_bench.json" -v)
[[ -n "${GPU_BENCH_CACHE:-}" ]] && args+=(--cache-dir "$GPU_BENCH_CACHE")

status=0
# SIGTERM at the limit: the bench stops the row it is in and still prints the table; KILL 20 s later if it hangs.
timeout -s TERM -k 20 "$limit" "$py" -m bench.gpu_bench "${args[@]}" >"$out/gpu_bench.txt" 2>"$out/gpu_bench.log" ||
    status=$?
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv >>"$out/env.txt" 2>&1 || true
cat "$out/gpu_bench.txt"
echo "--- last lines of gpu_bench.log (exit $status)"
tail -n 25 "$out/gpu_bench.log"
exit "$status"
