"""Model cache benchmark: warm vs snapshot_download, start-up checks, weight reads from local disk and from a
bucket mount, and four cold starters sharing one mount. Prints medians over repeats; ``--json-out`` keeps them.

    .venv/bin/python -m bench.cache_bench [--size-mib 256] [--shards 4] [--repeats 3] [--json-out FILE]

Everything runs on 127.0.0.1: a LocalHub serves a synthetic model, fake-gcs-server holds the bucket and rclone
mounts it. Things compared with each other are measured in the same repeat, in rotating order. As root the page
cache is dropped before every cold read; otherwise "cold" reads may come from memory (the header says which).
The mount sections need rclone and /dev/fuse and are skipped, with the reason, without them.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from tests.support.fuse import RcloneMount, fuse_available
from tests.support.hubserver import LocalHub
from tests.support.objectstores import FakeGcs, child_env  # sets the gcsfs switch; gcsfs itself loads lazily

from bench.report import Report, print_facts_and_rows
from gnosis_ocr.modelcache import ModelCache
from gnosis_ocr.modelcache.push import push_snapshot
from gnosis_ocr.modelcache.weights import read_files

REPO = "gnosis-bench/synthetic-model"
MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT = 180.0  # seconds any one child process may take
DEFAULT_WORKERS, DEFAULT_CHUNK_MIB = 4, 16  # gnosis_ocr.modelcache.loader.ReadOptions
SWEEP_WORKERS, SWEEP_CHUNKS_MIB = (1, 2, 4), (4, 16, 64)
STARTERS = 4

WARM_OURS = """
import json, sys, time
from pathlib import Path
from gnosis_ocr.modelcache import ModelCache
from huggingface_hub import HfApi, hf_hub_url, snapshot_download  # the imports the hf child pays before its clock
cache = ModelCache(Path(sys.argv[1]), endpoint=sys.argv[2])
started = time.perf_counter()
result = cache.warm(sys.argv[3])
print(json.dumps({"seconds": time.perf_counter() - started, "bytes": result.downloaded_bytes}))
"""

WARM_HF = """
import json, sys, time
from huggingface_hub import snapshot_download
started = time.perf_counter()
snapshot_download(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


class BenchError(RuntimeError):
    """A step of the benchmark failed (a child exited non-zero, a snapshot was not complete)."""


# -- machine ----------------------------------------------------------------------------------------------------


class PageCache:
    """Drops the kernel page cache (root only) and counts whether it could."""

    def __init__(self) -> None:
        self.tried = 0
        self.dropped = 0

    def drop(self) -> bool:
        self.tried += 1
        os.sync()
        try:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        except OSError:
            return False
        self.dropped += 1
        return True

    def describe(self) -> str:
        if self.tried and self.dropped == self.tried:
            return f"yes, before every cold read ({self.dropped} drops)"
        if self.dropped:
            return f"partly ({self.dropped} of {self.tried} drops worked)"
        return "NO (not root?): cold reads may come from the page cache"


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({type(exc).__name__})"
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr).strip() else "?"


def machine_facts() -> dict[str, Any]:
    import huggingface_hub
    import safetensors
    import torch

    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln),
        platform.processor(),
    )
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem / 2**30, 1),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
        "huggingface_hub": huggingface_hub.__version__,
        "rclone": _first_line(["rclone", "version"]),
        "fuse": fuse_available() or "available",
    }


# -- the synthetic model ----------------------------------------------------------------------------------------


def _tokenizer(vocab: int) -> dict[str, Any]:
    return {
        "version": "1.0",
        "added_tokens": [],
        "model": {"type": "BPE", "vocab": {f"tok{i:05d}": i for i in range(vocab)}, "merges": []},
    }


def _shard_tensors(index: int, nbytes: int, seed: int) -> dict[str, Any]:
    """Four tensors (two bf16, two f32) of random values, about ``nbytes`` together."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    cols = 1024
    tensors = {}
    for j, dtype in enumerate((torch.bfloat16, torch.float32, torch.bfloat16, torch.float32)):
        itemsize = torch.empty(0, dtype=dtype).element_size()
        rows = max(1, nbytes // 4 // (cols * itemsize))
        tensors[f"layers.{index}.w{j}"] = torch.randn(rows, cols, generator=gen).to(dtype)
    return tensors


def make_model(folder: Path, size_mib: int, shards: int) -> int:
    """config.json, tokenizer.json and ``shards`` safetensors shards of ``size_mib`` in all; returns total bytes."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "synthetic", "architectures": ["Synthetic"]}))
    (folder / "tokenizer.json").write_text(json.dumps(_tokenizer(4000)))
    weight_map: dict[str, str] = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        tensors = _shard_tensors(i, size_mib * MIB // shards, seed=i)
        save_file(tensors, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return sum(p.stat().st_size for p in folder.iterdir())


# -- shared context ---------------------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    hub: LocalHub
    model_bytes: int
    pages: PageCache
    report: Report

    def child_env(self, **extra: str) -> dict[str, str]:
        """A child's environment: no token, private HF_HOME, telemetry off, loopback hub."""
        unset = ["HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MODEL_CACHE_PATH", "MODEL_NAME", "HF_HUB_CACHE"]
        unset += [k for k in os.environ if k.startswith("GNOSIS_")]  # every child runs on the defaults
        clear: dict[str, str | None] = dict.fromkeys(unset)
        base = {
            "HF_HOME": str(self.tmp / "hf_home"),
            "HF_ENDPOINT": self.hub.endpoint,
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "PYTHONPATH": str(ROOT),
        }
        return child_env(clear, base, extra)

    def cold(self, mount: RcloneMount | None = None) -> None:
        self.pages.drop()
        if mount is not None:
            mount.refresh()


def run_child(code: str, args: Sequence[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``python -c code args``; its last stdout line is JSON."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"child exited {done.returncode}: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_order(items: Sequence[Any], repeat: int) -> list[Any]:
    """The order of the compared things in one repeat: forward, backward, then shifted by one and again, so
    that no method always runs first or last and a drift within a repeat cancels out over the repeats."""
    k = (repeat // 2) % len(items) if items else 0
    shifted = [*items[k:], *items[:k]]
    return shifted[::-1] if repeat % 2 else shifted


def mib_s(nbytes: int, seconds: float) -> float:
    return nbytes / MIB / seconds if seconds > 0 else float("inf")


# -- context: what one core can hash ----------------------------------------------------------------------------


def _hash_mib(buf: bytes, threads: int) -> float:
    """MiB/s of sha256 over ``buf`` once per thread, ``threads`` at once (hashlib releases the GIL)."""
    view = memoryview(buf)

    def one(_: int) -> None:
        digest = hashlib.sha256()
        for pos in range(0, len(buf), 16 * MIB):
            digest.update(view[pos : pos + 16 * MIB])

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, range(threads)))
    return mib_s(len(buf) * threads, time.perf_counter() - started)


def bench_hash_ceiling(b: Bench) -> None:
    """sha256 in memory: the CPU ceiling of every verifying path (warm, full check, read with verify)."""
    buf = os.urandom(64 * MIB)
    cores = os.cpu_count() or 1
    for r in range(b.args.repeats):
        for threads in run_order(sorted({1, cores}), r):
            b.report.row("cpu ceiling", f"sha256 in memory, {threads} thread(s)", "MiB/s").samples.append(
                _hash_mib(buf, threads)
            )


# -- 2. warm vs snapshot_download -------------------------------------------------------------------------------


def _warm_ours(b: Bench, dest: Path) -> float:
    return float(run_child(WARM_OURS, [str(dest), b.hub.endpoint, REPO], b.child_env())["seconds"])


def _warm_hf(b: Bench, dest: Path) -> float:
    return float(run_child(WARM_HF, [REPO], b.child_env(HF_HUB_CACHE=str(dest)))["seconds"])


def bench_warm(b: Bench) -> Path:
    """Both downloaders into empty folders, alternating; returns our last cache root (kept for the read tests)."""
    section = "warm: hub -> empty dir"
    ours = b.report.row(
        section,
        "gnosis ModelCache.warm",
        "MiB/s",
        vs="hf snapshot_download",
        note="4 workers, sha256 (sha1 for small files), fsync",
    )
    hf = b.report.row(section, "hf snapshot_download", "MiB/s", note="8 workers, no hash, no fsync")
    sent_ours = b.report.row(section, "hub bytes sent / model, gnosis", "x")
    sent_hf = b.report.row(section, "hub bytes sent / model, hf", "x")
    kept = b.tmp / "local-cache"
    for r in range(b.args.repeats):
        for name in run_order(("ours", "hf"), r):
            dest = b.tmp / f"warm-{name}-{r}"
            os.sync()  # the previous run's dirty pages, so that neither pays for the other
            b.hub.reset_counters()
            seconds = _warm_ours(b, dest) if name == "ours" else _warm_hf(b, dest)
            (ours if name == "ours" else hf).samples.append(mib_s(b.model_bytes, seconds))
            (sent_ours if name == "ours" else sent_hf).samples.append(b.hub.bytes_sent / b.model_bytes)
            if name == "ours" and r == b.args.repeats - 1:
                dest.rename(kept)
            else:
                shutil.rmtree(dest, ignore_errors=True)
    return kept


# -- 3. start-up checks -----------------------------------------------------------------------------------------


def bench_status(b: Bench, root: Path, where: str, mount: RcloneMount | None = None) -> None:
    """One fast and one full check of ``root``, each after dropping caches (one repeat's worth)."""
    cache = ModelCache(root, endpoint=b.hub.endpoint)
    section = "start-up check (status)"
    for full in (False, True):
        row = b.report.row(section, f"{'full, sha256' if full else 'fast'}: {where}", "ms")
        b.cold(mount)
        started = time.perf_counter()
        report = cache.status(REPO, full=full)
        row.samples.append((time.perf_counter() - started) * 1000)
        if not report.complete:
            raise BenchError(f"{root}: {report.summary()}")


# -- 4. weight reads --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Weights:
    paths: list[Path]
    sha256: dict[Path, str]
    nbytes: int


def weights_of(root: Path, endpoint: str) -> Weights:
    report = ModelCache(root, endpoint=endpoint).status(REPO)
    if not report.complete or report.manifest is None or report.snapshot_dir is None:
        raise BenchError(f"{root}: {report.summary()}")
    files = [(report.snapshot_dir / f.path, f.sha256) for f in report.manifest.files if f.path.endswith(".safetensors")]
    paths = [p for p, _ in files]
    return Weights(paths, dict(files), sum(p.stat().st_size for p in paths))


def raw_read(paths: Sequence[Path], *, workers: int, chunk_bytes: int) -> int:
    """The plain-I/O baseline: each file front to back into a preallocated buffer, ``workers`` files at once."""

    def one(path: Path) -> int:
        size = path.stat().st_size
        view = memoryview(bytearray(size))
        pos = 0
        with path.open("rb", buffering=0) as fh:
            while pos < size and (n := fh.readinto(view[pos : pos + chunk_bytes])):
                pos += n
        return pos

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(one, paths))


def ours_read(w: Weights, *, workers: int, chunk_mib: int, verify: bool) -> int:
    _, stats = read_files(
        w.paths, workers=workers, chunk_bytes=chunk_mib * MIB, expected_sha256=w.sha256 if verify else None
    )
    return stats.bytes


def mmap_read(paths: Sequence[Path]) -> int:
    """safetensors.torch.load_file (mmap), every tensor cloned so that every byte is faulted in."""
    from safetensors.torch import load_file

    total = 0
    for path in paths:
        for tensor in load_file(path).values():
            total += tensor.clone().nbytes
    return total


def read_methods(w: Weights) -> dict[str, Callable[[], object]]:
    d, c = DEFAULT_WORKERS, DEFAULT_CHUNK_MIB
    return {
        f"raw threads {d}w/{c}MiB": lambda: raw_read(w.paths, workers=d, chunk_bytes=c * MIB),
        f"gnosis read_files verify {d}w/{c}MiB": lambda: ours_read(w, workers=d, chunk_mib=c, verify=True),
        f"gnosis read_files no-verify {d}w/{c}MiB": lambda: ours_read(w, workers=d, chunk_mib=c, verify=False),
        "safetensors load_file (mmap)+clone": lambda: mmap_read(w.paths),
    }


def sweep_methods(w: Weights) -> dict[str, Callable[[], object]]:
    return {
        f"  sweep: gnosis verify {n}w/{c}MiB": partial(ours_read, w, workers=n, chunk_mib=c, verify=True)
        for n in SWEEP_WORKERS
        for c in SWEEP_CHUNKS_MIB
    }


def time_reads(
    b: Bench, section: str, w: Weights, methods: dict[str, Callable[[], object]], *, r: int, mount: RcloneMount | None
) -> None:
    """One cold, timed run of every method, in the order of repeat ``r``."""
    baseline = next(iter(methods))
    for name in run_order(list(methods), r):
        row = b.report.row(section, name, "MiB/s", vs=None if name == baseline else baseline)
        b.cold(mount)
        started = time.perf_counter()
        methods[name]()
        row.samples.append(mib_s(w.nbytes, time.perf_counter() - started))


def bench_local(b: Bench, root: Path) -> None:
    w = weights_of(root, b.hub.endpoint)
    for r in range(b.args.repeats):
        bench_status(b, root, "local disk")
        time_reads(b, "read: local disk, cold", w, read_methods(w), r=r, mount=None)


# -- 4b. the same cache on a bucket mount -----------------------------------------------------------------------


def push_to_bucket(b: Bench, gcs: FakeGcs, local_root: Path) -> str:
    cache = ModelCache(local_root, endpoint=b.hub.endpoint)
    bucket = gcs.new_bucket("bench")
    started = time.perf_counter()
    push_snapshot(cache.layout(REPO), cache.status(REPO), f"gs://{bucket}/huggingface", filesystem=gcs.fs())
    seconds = time.perf_counter() - started
    b.report.row("push", "push_snapshot -> fake-gcs (gcsfs)", "MiB/s", note="once").samples.append(
        mib_s(b.model_bytes, seconds)
    )
    return bucket


def gcsfs_direct(gcs: FakeGcs, bucket: str, w: Weights, mount_root: Path) -> Callable[[], object]:
    """Reading the same objects with gcsfs, no FUSE: the emulator's own ceiling."""
    keys = [f"{bucket}/huggingface/{p.relative_to(mount_root).as_posix()}" for p in w.paths]

    def read() -> int:
        return sum(len(v) for v in gcs.fs().cat(keys).values())

    return read


def bench_mount(b: Bench, gcs: FakeGcs, bucket: str) -> None:
    """Per repeat a fresh read-only mount: status checks, then every reader, cold, in balanced order."""
    section = "read: rclone mount, cold"
    for r in range(b.args.repeats):
        with RcloneMount(gcs, bucket, read_only=True) as mnt:
            root = mnt.path / "huggingface"
            bench_status(b, root, "rclone mount", mnt)
            w = weights_of(root, b.hub.endpoint)
            methods = {**read_methods(w), "gcsfs cat, no FUSE": gcsfs_direct(gcs, bucket, w, root)}
            time_reads(b, section, w, {**methods, **sweep_methods(w)}, r=r, mount=mnt)


# -- 5. cold starters on one writable mount ---------------------------------------------------------------------


@contextlib.contextmanager
def started_children(argv: list[str], env: dict[str, str], count: int) -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    try:
        for _ in range(count):
            procs.append(
                subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            )
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def _collect(procs: list[subprocess.Popen[str]], deadline: float) -> list[dict[str, Any]]:
    docs = []
    for proc in procs:
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        if proc.returncode != 0:
            raise BenchError(f"cache warm exited {proc.returncode}: {err[-2000:]}")
        docs.append(json.loads(out))
    return docs


def one_stampede(b: Bench, gcs: FakeGcs, section: str) -> str:
    with RcloneMount(gcs, gcs.new_bucket("starters")) as mnt:
        root = mnt.path / "huggingface"
        env = b.child_env(MODEL_CACHE_PATH=str(root), MODEL_NAME=REPO)
        argv = [sys.executable, "-m", "gnosis_ocr", "cache", "warm", "--json"]
        b.hub.reset_counters()
        started = time.monotonic()
        with started_children(argv, env, STARTERS) as procs:
            docs = _collect(procs, started + CHILD_TIMEOUT)
        wall = time.monotonic() - started
        flush_started = time.monotonic()
        mnt.flush(timeout=CHILD_TIMEOUT)
        flush = time.monotonic() - flush_started
        complete = ModelCache(root, endpoint=b.hub.endpoint).status(REPO).complete
    b.report.row(section, "hub bytes sent / model size", "x", note="goal <= 1.05").samples.append(
        b.hub.bytes_sent / b.model_bytes
    )
    b.report.row(section, "wall, start to last exit", "s").samples.append(wall)
    b.report.row(section, "then mount -> bucket (flush)", "s").samples.append(flush)
    downloaded = sum(1 for d in docs if d["downloaded_files"])
    waited = sum(1 for d in docs if d["waited_for_writer"] and not d["downloaded_files"])
    return f"{downloaded} downloaded, {waited} waited{'' if complete else ', INCOMPLETE'}"


def bench_starters(b: Bench, gcs: FakeGcs) -> None:
    section = f"{STARTERS} cold starters, 1 mount"
    outcomes = [one_stampede(b, gcs, section) for _ in range(b.args.repeats)]
    note = f"{outcomes[0]} (every repeat)" if len(set(outcomes)) == 1 else "; ".join(outcomes)
    b.report.row(section, "who downloaded", "", note=note)


# -- output -----------------------------------------------------------------------------------------------------


def print_report(report: Report) -> None:
    print_facts_and_rows(report, "gnosis-ocr model cache benchmark", width=180)


# -- main -------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cache_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256, help="total size of the synthetic shards")
    parser.add_argument("--shards", type=int, default=4, help="number of safetensors shards")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per measurement (medians are quoted)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the numbers here as JSON")
    args = parser.parse_args(argv)
    if args.size_mib < 1 or args.shards < 1 or args.repeats < 1:
        parser.error("--size-mib, --shards and --repeats must be at least 1")
    return args


def run_all(b: Bench, stack: contextlib.ExitStack) -> None:
    bench_hash_ceiling(b)
    local_root = bench_warm(b)
    bench_local(b, local_root)
    reason = fuse_available()
    if reason is not None:
        b.report.facts["skipped"] = f"mount sections: {reason}"
        return
    gcs = stack.enter_context(FakeGcs())
    bucket = push_to_bucket(b, gcs, local_root)
    bench_mount(b, gcs, bucket)
    bench_starters(b, gcs)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (a CI timeout, `kill`) unwinds like an error, so mounts, servers and temp folders go away too
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    report = Report(facts=machine_facts())
    pages = PageCache()
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gnosis-bench-")))
            model_bytes = make_model(tmp / "model", args.size_mib, args.shards)
            report.facts["model"] = f"{REPO}: {args.shards} shards, {model_bytes / MIB:.1f} MiB"
            report.facts["repeats"] = args.repeats
            hub = stack.enter_context(LocalHub(memory_limit=model_bytes + MIB))
            hub.add_repo(REPO, tmp / "model")
            run_all(Bench(args, tmp, hub, model_bytes, pages, report), stack)
    finally:
        report.facts["page cache dropped"] = pages.describe()
        report.facts["bench seconds"] = round(time.monotonic() - started, 1)
        print_report(report)
        if args.json_out is not None:
            report.write_json(args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
