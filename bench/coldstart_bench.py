"""Cold start at the real size: reading, loading and starting a 7.5 GB checkpoint from local disk and from a bucket
mount, side by side with safetensors, Run:ai Model Streamer and fastsafetensors. Prints one table.

    flock /tmp/gnosis-heavy.lock .venv/bin/python -m bench.coldstart_bench [--runs 3] [--only read,load,start]
        [--where local,mount] [--keep] [--work DIR] [--json FILE]
    .venv/bin/python -m bench.coldstart_bench --smoke      # the tiny model, one run: what tests/bench runs

The checkpoint is ``bench.realshape``'s (random weights, Nanonets-OCR-s' exact config and shard layout: 2 bf16
shards, 7.51 GB) laid into a cache under ``--work``; ``--where mount`` pushes that cache into fake-gcs-server
(filesystem backend) and mounts the bucket read-only with rclone (FUSE). Every measurement runs in a fresh child
process (its own imports, its own peak RSS, read from ``/proc/<pid>/status`` VmHWM), after ``sync; echo 3 >
/proc/sys/vm/drop_caches`` and an rclone directory-cache flush, in rotating order over ``--runs`` repeats; the
table shows medians. Sections (``--only``):

* ``read``: bytes from the shards into host memory. The ceiling is a raw parallel sequential read (the reader's
  own segments, no hashing, no tensors); then the project's reader with sha256 and with sizes only (tensors
  built), safetensors ``safe_open`` (mmap, every page touched), Run:ai Model Streamer (``SafetensorsStreamer``,
  its default concurrency) and fastsafetensors (``fastsafe_open(nogds=True, device="cpu")``) where installed.
* ``load``: to a model object with every weight in host memory (each parameter's pages touched, which is when an
  mmap'd ``from_pretrained`` reads them): ``load_pretrained`` (one host copy, bf16) with sha256 and sizes only,
  and ``from_pretrained(snapshot path)``, what users do today.
* ``start``: the start-up fast check (``resolve`` offline); a whole process from spawn to a loaded engine
  (``engine_from_settings(...).load()``); ``gnosis-ocr serve`` from spawn to ``/readyz`` 200 with the VLM forced
  on CPU (transformers backend). The goal row "raw read + 5 s" is the raw read's median time plus 5 s.

Peak RSS rows are in GB with their ratio to the weights' size. What it built (the checkpoint, the bucket) is
removed at the end unless ``--keep``. The tables of record are in the closing notes of issue 11.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.cache_bench import PageCache, machine_facts, run_order
from bench.realshape import REPO_IDS, REVISION, Shape, ensure_checkpoint, remove_checkpoint
from bench.report import Report, print_facts_and_rows

ROOT = Path(__file__).resolve().parents[1]
GB = 1e9
SECTIONS = ("read", "load", "start")
WHERES = ("local", "mount")
RAW = "raw parallel read (ceiling)"
CHILD_TIMEOUT = 900.0
BUCKET = "coldstart"


# -- the child: one measurement in a fresh process ------------------------------------------------------------


def _vm_hwm() -> int:
    """This process's peak resident set size in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _resolved(root: Path, repo: str) -> Any:
    from gnosis_ocr.modelcache import ModelCache

    return ModelCache(root, endpoint="http://127.0.0.1:9").resolve(repo, REVISION, mode="offline")


def _shards(root: Path, repo: str) -> list[Path]:
    return [p for p, _ in _resolved(root, repo).weight_files()]


def _raw(paths: list[Path], workers: int, chunk: int) -> int:
    from gnosis_ocr.modelcache.weights import segments_for

    sizes = {p: p.stat().st_size for p in paths}
    bufs = {p: memoryview(bytearray(n)) for p, n in sizes.items()}

    def one(seg: Any) -> int:
        view, pos = bufs[seg.path], seg.start
        with seg.path.open("rb", buffering=0) as fh:
            fh.seek(pos)
            while pos < seg.end and (n := fh.readinto(view[pos : min(pos + chunk, seg.end)])):
                pos += n
        return pos - seg.start

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(one, segments_for(sizes, workers=workers, chunk_bytes=chunk)))


def _touch(tensors: Iterator[Any]) -> int:
    """Bytes of the tensors, every page read (mmap'd tensors fault in here)."""
    total = 0
    for t in tensors:
        if t.numel():
            t.reshape(-1)[:: max(1, 4096 // t.element_size())].sum()
        total += t.nbytes
    return total


def _child_read(method: str, root: Path, repo: str) -> dict[str, Any]:
    import safetensors.torch  # noqa: F401 (imports are paid before the clock, as every method's are)
    import torch  # noqa: F401

    from gnosis_ocr.modelcache.loader import ReadOptions, read_state_dict

    opts = ReadOptions()
    resolved = _resolved(root, repo)
    paths = [p for p, _ in resolved.weight_files()]
    started = time.perf_counter()
    note = ""
    if method == RAW:
        nbytes = _raw(paths, opts.workers, opts.chunk_bytes)
    elif method.startswith("gnosis reader"):
        _state, stats = read_state_dict(resolved, ReadOptions(verify="sha256" in method))
        nbytes = stats.bytes
    elif method.startswith("safetensors"):
        from safetensors import safe_open

        nbytes = 0
        handles = []
        for path in paths:
            handle = safe_open(path, framework="pt")
            handles.append(handle)
            nbytes += _touch(handle.get_tensor(k) for k in handle.keys())  # noqa: SIM118 (not a dict)
    elif method.startswith("Run:ai"):
        from runai_model_streamer import SafetensorsStreamer

        kept = []
        with SafetensorsStreamer() as streamer:
            streamer.stream_files([str(p) for p in paths])
            for _, tensor in streamer.get_tensors():
                kept.append(tensor)
        nbytes = sum(t.nbytes for t in kept)
        note = f"RUNAI_STREAMER_CONCURRENCY={os.environ.get('RUNAI_STREAMER_CONCURRENCY', 'default')}"
    elif method.startswith("fastsafetensors"):
        from fastsafetensors import fastsafe_open

        kept = []
        with fastsafe_open([str(p) for p in paths], nogds=True, device="cpu", framework="pytorch") as f:
            for key in f.keys():  # noqa: SIM118
                kept.append(f.get_tensor(key).clone())
        nbytes = sum(t.nbytes for t in kept)
        note = "nogds, cpu"
    else:
        raise ValueError(f"unknown read method {method!r}")
    return {"seconds": time.perf_counter() - started, "bytes": nbytes, "note": note}


def _child_load(method: str, root: Path, repo: str) -> dict[str, Any]:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from gnosis_ocr.modelcache.loader import ReadOptions, load_pretrained

    resolved = _resolved(root, repo)
    started = time.perf_counter()
    if method.startswith("gnosis load_pretrained"):
        model = load_pretrained(
            resolved, Qwen2_5_VLForConditionalGeneration, options=ReadOptions(verify="sha256" in method)
        )
    elif method.startswith("from_pretrained"):
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(resolved.path)
    else:
        raise ValueError(f"unknown load method {method!r}")
    with torch.no_grad():  # every weight in memory (an mmap'd load reads its pages only here), then one step
        _touch(iter(model.parameters()))
        seconds = time.perf_counter() - started
        model(input_ids=torch.tensor([[1, 2, 3]]))
    return {"seconds": seconds, "note": str(model.dtype).removeprefix("torch.")}


def _child_check(root: Path, repo: str) -> dict[str, Any]:
    from gnosis_ocr.modelcache import ModelCache

    started = time.perf_counter()
    ModelCache(root, endpoint="http://127.0.0.1:9").resolve(repo, REVISION, mode="offline")
    return {"seconds": time.perf_counter() - started}


def _child_engine() -> dict[str, Any]:
    """What ``gnosis-ocr`` does at start: settings from the environment, resolve, load the VLM engine."""
    from gnosis_ocr.engines import engine_from_settings
    from gnosis_ocr.modelcache import cache_from_settings
    from gnosis_ocr.modelcache.offline import prepare_environment
    from gnosis_ocr.settings import Settings

    settings = Settings()
    prepare_environment(os.environ, offline=True)
    engine = engine_from_settings(settings, cache_from_settings(settings))
    engine.load()
    return {"loaded": engine.info.model}


def child_main(args: argparse.Namespace) -> int:
    root, repo = Path(args.root), args.repo
    if args.child == "check":
        out = _child_check(root, repo)
    elif args.child == "engine":
        out = _child_engine()
    elif args.section == "read":
        out = _child_read(args.child, root, repo)
    else:
        out = _child_load(args.child, root, repo)
    out["peak_rss"] = _vm_hwm()
    print(json.dumps(out), flush=True)
    return 0


# -- the parent -------------------------------------------------------------------------------------------------


class BenchError(RuntimeError):
    pass


def child_env(root: Path, repo: str, port: int | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GNOSIS_", "HF_", "MODEL_", "RUNAI_"))}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "TRANSFORMERS_VERBOSITY": "error",
            "MODEL_CACHE_PATH": str(root),
            "MODEL_NAME": repo,
            "GNOSIS_CACHE_MODE": "offline",
            "GNOSIS_ENGINE": "nanonets",
            "GNOSIS_DEVICE": "cpu",
            "GNOSIS_VLM_BACKEND": "transformers",
            "GNOSIS_HOST": "127.0.0.1",
        }
    )
    if port is not None:
        env["GNOSIS_PORT"] = str(port)
    return env


def _peak_rss_of(pid: int) -> int:
    """VmHWM of ``pid`` and its children (bytes), while they run."""
    import psutil

    total = 0
    try:
        proc = psutil.Process(pid)
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error, OSError, ValueError):
                total += _hwm_of(p.pid)
    except psutil.Error:
        pass
    return total


def _hwm_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def run_child(section: str, method: str, root: Path, repo: str, timeout: float) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.coldstart_bench", "--child", method, "--section", section]
    argv += ["--root", str(root), "--repo", repo]
    started = time.perf_counter()
    done = subprocess.run(
        argv, env=child_env(root, repo), cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchError(f"{method}: child exited {done.returncode}: {done.stderr[-1500:]}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    out["wall"] = wall
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_to_ready(root: Path, repo: str, timeout: float) -> dict[str, Any]:
    """Seconds from spawning ``gnosis-ocr serve`` to ``/readyz`` 200, and the server's peak RSS."""
    port = free_port()
    exe = Path(sys.executable).with_name("gnosis-ocr")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "gnosis_ocr.cli.main"]
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*argv, "serve"],
        env=child_env(root, repo, port),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/readyz"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        while True:
            if proc.poll() is not None:
                raise BenchError(
                    f"serve exited {proc.returncode}: {(proc.stderr.read() if proc.stderr else '')[-1500:]}"
                )
            if time.perf_counter() - started > timeout:
                raise BenchError(f"serve not ready after {timeout:.0f} s")
            with contextlib.suppress(urllib.error.URLError, OSError), opener.open(url, timeout=2) as response:
                if response.status == 200:
                    break
            time.sleep(0.1)
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "peak_rss": _peak_rss_of(proc.pid)}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def engine_start(root: Path, repo: str, timeout: float) -> dict[str, Any]:
    out = run_child("start", "engine", root, repo, timeout)
    return {"seconds": out["wall"], "peak_rss": out["peak_rss"]}


def read_methods() -> list[str]:
    methods = [RAW, "gnosis reader, sha256", "gnosis reader, sizes only", "safetensors safe_open (mmap)"]
    import importlib.util

    if importlib.util.find_spec("runai_model_streamer"):
        methods.append("Run:ai Model Streamer")
    if importlib.util.find_spec("fastsafetensors"):
        methods.append("fastsafetensors")
    return methods


LOAD_METHODS = ["gnosis load_pretrained, sha256", "gnosis load_pretrained, sizes only", "from_pretrained(snapshot)"]
START_METHODS = ["start-up fast check", "process start to loaded engine", "gnosis-ocr serve to /readyz"]


@dataclass
class Bench:
    args: argparse.Namespace
    report: Report
    pages: PageCache
    nbytes: int
    repo: str
    skipped: dict[tuple[str, str], str]
    loads: list[float] = field(default_factory=list)  # 1-minute load average before each measurement

    def cold(self, refresh: Callable[[], None] | None) -> None:
        self.loads.append(os.getloadavg()[0])
        self.pages.drop()
        if refresh is not None:
            refresh()

    def timeout(self, label: str) -> float:
        """``--timeout``, or less once the raw read has a time here: 3x it plus a minute (a method slower than
        that is reported as not finishing rather than holding the run for many minutes)."""
        raw = self.report.median_of(f"start, {label}", "raw read (s)")
        return self.args.timeout if raw is None else min(self.args.timeout, 3 * raw + 60)

    def measure(self, where: str, section: str, method: str, root: Path, timeout: float) -> dict[str, Any]:
        if section == "start":
            if method == START_METHODS[0]:
                out = run_child("start", "check", root, self.repo, timeout)
                return out
            if method == START_METHODS[1]:
                return engine_start(root, self.repo, timeout)
            return serve_to_ready(root, self.repo, timeout)
        return run_child(section, method, root, self.repo, timeout)

    def one(
        self,
        where: str,
        label: str,
        section: str,
        method: str,
        *,
        root: Path,
        refresh: Callable[[], None] | None,
        r: int,
    ) -> None:
        """One cold measurement of ``method``, recorded (or why it could not be)."""
        self.cold(refresh)
        timeout = self.timeout(label)
        try:
            out = self.measure(where, section, method, root, timeout)
        except (subprocess.TimeoutExpired, BenchError) as exc:
            if isinstance(exc, subprocess.TimeoutExpired):
                why = f"did not finish in {timeout:.0f} s (< {self.nbytes / GB / timeout:.3f} GB/s)"
            else:
                why = f"failed: {str(exc).strip().splitlines()[-1][:150]}"
            self.skipped[(where, method)] = why
            print(f"  {where} {method}: {why}", file=sys.stderr)
            self.report.row(f"{section}, {label}", method, "-").note = why
            return
        print(f"  run {r + 1} {where} {section} {method}: {out.get('seconds', 0):.2f} s", file=sys.stderr)
        if section == "read":
            row = self.report.row(f"read, {label}", method, "GB/s", vs=None if method == RAW else RAW)
            row.samples.append(out["bytes"] / GB / out["seconds"])
            if method == RAW:
                self.report.row(f"start, {label}", "raw read (s)", "s").samples.append(out["seconds"])
        else:
            vs = "raw read (s)" if section == "start" else None
            row = self.report.row(f"{section}, {label}", method, "s", vs=vs)
            row.samples.append(out["seconds"])
        if out.get("note"):
            row.note = out["note"]
        rss = self.report.row(f"peak RSS, {label}", method, "GB", vs="weights (model size)")
        rss.samples.append(out["peak_rss"] / GB)

    def run_where(self, where: str, root: Path, refresh: Callable[[], None] | None) -> None:
        label = "local disk" if where == "local" else "rclone mount of fake-gcs"
        model_gb = self.nbytes / GB
        plan = [
            (s, m)
            for s in self.args.only
            for m in {"read": read_methods(), "load": LOAD_METHODS, "start": START_METHODS}[s]
        ]
        for section, method in plan:  # rows in table order
            if section == "read":
                self.report.row(f"read, {label}", method, "GB/s", vs=None if method == RAW else RAW)
            else:
                if section == "start":
                    self.report.row(f"start, {label}", "raw read (s)", "s")
                    self.report.row(f"start, {label}", "raw read + 5 s (goal)", "s")
                self.report.row(f"{section}, {label}", method, "s", vs="raw read (s)" if section == "start" else None)
        self.report.row(f"peak RSS, {label}", "weights (model size)", "GB").samples.append(model_gb)
        for _, method in plan:
            self.report.row(f"peak RSS, {label}", method, "GB", vs="weights (model size)")
        for r in range(self.args.runs):
            for section, method in run_order(plan, r):
                if (where, method) not in self.skipped:
                    self.one(where, label, section, method, root=root, refresh=refresh, r=r)
        goal = self.report.median_of(f"start, {label}", "raw read (s)")
        if goal is not None:
            self.report.row(f"start, {label}", "raw read + 5 s (goal)", "s").samples.append(goal + 5)
        for (w, method), why in self.skipped.items():
            if w == where:
                print(f"  skipped on {where}: {method}: {why}", file=sys.stderr)


def _object_metadata(path: Path) -> bytes:
    """fake-gcs-server's filesystem backend keeps an object's metadata in its ``user.metadata`` xattr (what an
    upload through the emulator writes): md5 and crc32c of the bytes, as the GCS API reports them."""
    import base64
    import hashlib

    import google_crc32c

    md5, crc = hashlib.md5(usedforsecurity=False), google_crc32c.Checksum()
    with path.open("rb", buffering=0) as fh:
        while block := fh.read(16 * 2**20):
            md5.update(block)
            crc.update(block)
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    digest = base64.b64encode(md5.digest()).decode()
    meta = {
        "StorageClass": "STANDARD",
        "ContentType": "application/octet-stream",
        "Crc32c": base64.b64encode(crc.digest()).decode(),
        "Md5Hash": digest,
        "Etag": digest,
        "Created": now,
        "Updated": now,
        "Generation": time.time_ns() // 1000,
    }
    return json.dumps(meta).encode()


def seed_bucket(data: Path, bucket: str, local_root: Path) -> int:
    """The local cache root as objects under ``huggingface/`` of ``bucket``, written straight into the emulator's
    filesystem backend: each object is the file (a hard link where the filesystem allows, else a copy) plus its
    metadata xattr. Why not ``push_snapshot`` through the emulator, as the tests do: fake-gcs-server assembles a
    resumable upload in memory, re-copying it as chunks arrive, so a 5 GB object took over 10 minutes and 6 GB of
    RAM without finishing. Reads still go through the emulator's HTTP API and rclone. Returns the bytes seeded."""
    total = 0
    from gnosis_ocr.modelcache.layout import is_temp_name

    for src in sorted(p for p in local_root.rglob("*") if p.is_file()):
        rel = src.relative_to(local_root)
        if is_temp_name(src.name) or "lease.json" in rel.parts or any(is_temp_name(part) for part in rel.parts):
            continue  # a writer's temp files and the lease are not part of the cache
        dest = data / bucket / "huggingface" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)
        try:
            os.link(src, dest)
        except OSError:
            shutil.copyfile(src, dest)
        os.setxattr(dest, "user.metadata", _object_metadata(dest))
        total += src.stat().st_size
    return total


@contextlib.contextmanager
def bucket_mount(b: Bench, local_root: Path, work: Path) -> Iterator[tuple[Path, Callable[[], None]]]:
    from tests.support.fuse import RcloneMount, fuse_available
    from tests.support.objectstores import FakeGcs

    from gnosis_ocr.modelcache import ModelCache

    problem = fuse_available()
    if problem:
        raise BenchError(f"no FUSE mount here: {problem}")
    data = work / "gcs-data"
    data.mkdir(parents=True, exist_ok=True)
    with FakeGcs(data_dir=data) as gcs:
        if not (data / BUCKET).exists():
            gcs.create_bucket(BUCKET)
        with RcloneMount(gcs, BUCKET, read_only=True) as probe:
            complete = ModelCache(probe.path / "huggingface", endpoint="http://127.0.0.1:9").status(b.repo).complete
        if not complete:
            started = time.perf_counter()
            nbytes = seed_bucket(data, BUCKET, local_root)
            b.report.facts["bucket filled"] = (
                f"{nbytes / GB:.2f} GB seeded into fake-gcs-server's filesystem backend in "
                f"{time.perf_counter() - started:.0f} s (seed_bucket: hard links + metadata)"
            )
        else:
            b.report.facts["bucket filled"] = "reused (--keep)"
        with RcloneMount(gcs, BUCKET, read_only=True) as mnt:
            root = mnt.path / "huggingface"
            report = ModelCache(root, endpoint="http://127.0.0.1:9").status(b.repo)
            if not report.complete:
                raise BenchError(f"the bucket's cache is not complete through the mount: {report.summary()}")
            yield root, mnt.refresh


def meminfo_cached() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Cached:"):
            return int(line.split()[1]) * 1024
    return 0


def check_drop(pages: PageCache, snapshot_file: Path) -> str:
    """Read a file into the page cache, drop, and say whether the cache shrank by about its size."""
    with snapshot_file.open("rb") as fh:
        while fh.read(16 * 2**20):
            pass
    before = meminfo_cached()
    ok = pages.drop()
    after = meminfo_cached()
    if not ok:
        return "NO: cannot write /proc/sys/vm/drop_caches (not root?): cold reads may come from memory"
    size = snapshot_file.stat().st_size / GB
    return f"works (page cache {before / GB:.1f} GB -> {after / GB:.1f} GB after reading a {size:.1f} GB shard)"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.coldstart_bench", description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=("real", "tiny"), default="real")
    p.add_argument("--smoke", action="store_true", help="the tiny model, one run (quick; what the test runs)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--only", default=",".join(SECTIONS), help=f"sections, comma-separated: {','.join(SECTIONS)}")
    p.add_argument("--where", default=",".join(WHERES), help="local,mount")
    p.add_argument("--work", type=Path, default=ROOT / ".work" / "coldstart", help="checkpoint and bucket live here")
    p.add_argument("--keep", action="store_true", help="keep the checkpoint and the bucket for the next run")
    p.add_argument("--timeout", type=float, default=CHILD_TIMEOUT, help="seconds one measurement may take")
    p.add_argument("--json", type=Path, default=None)
    # the child side
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--section", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--repo", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.shape, args.runs = "tiny", 1
    args.only = [s for s in args.only.split(",") if s]
    args.where = [w for w in args.where.split(",") if w]
    bad = [s for s in args.only if s not in SECTIONS] + [w for w in args.where if w not in WHERES]
    if bad or args.runs < 1:
        p.error(f"unknown section or place {bad}, or --runs < 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    shape: Shape = args.shape
    work: Path = args.work
    cache_root = work / "cache"
    started = time.perf_counter()
    ckpt = ensure_checkpoint(cache_root, shape, workers=os.cpu_count() or 2)
    facts = machine_facts()
    facts.update(
        {
            "checkpoint": f"{ckpt.repo_id}@{ckpt.commit[:7]} ({shape}): {ckpt.total_bytes / GB:.2f} GB, "
            + ("reused" if ckpt.reused else f"built in {ckpt.build_seconds:.0f} s"),
            "runs": args.runs,
            "reader": "4 workers, 16 MiB chunks (ReadOptions defaults)",
        }
    )
    weights = [p for p in ckpt.snapshot.glob("*.safetensors")]
    pages = PageCache()
    facts["page cache drop"] = check_drop(pages, max(weights, key=lambda p: p.stat().st_size))
    report = Report(facts)
    b = Bench(args, report, pages, sum(p.stat().st_size for p in weights), REPO_IDS[shape], {})
    try:
        for where in args.where:  # in the order given; the table so far is printed (and saved) after each
            if where == "local":
                b.run_where("local", cache_root, None)
            else:
                try:
                    with bucket_mount(b, cache_root, work) as (mount_root, refresh):
                        b.run_where("mount", mount_root, refresh)
                except BenchError as exc:
                    report.facts["mount"] = f"skipped: {exc}"
            if where != args.where[-1]:
                finish(b, args, started, partial=True)
    finally:
        if not args.keep:
            shutil.rmtree(work / "gcs-data", ignore_errors=True)  # before the checkpoint its objects link to
            remove_checkpoint(cache_root, shape)
    finish(b, args, started, partial=False)
    return 0


def finish(b: Bench, args: argparse.Namespace, started: float, *, partial: bool) -> None:
    report = b.report
    report.facts["load avg at end"] = [round(x, 2) for x in os.getloadavg()]
    if b.loads:
        ordered = sorted(b.loads)
        report.facts["1-min load avg before each measurement (min/median/max)"] = (
            f"{ordered[0]:.2f} / {ordered[len(ordered) // 2]:.2f} / {ordered[-1]:.2f} on {os.cpu_count()} cores"
        )
    report.facts["bench seconds"] = round(time.perf_counter() - started)
    title = "cold start: read, load, start (medians; ratio: GB/s vs raw, s vs raw, GB vs model)"
    print_facts_and_rows(report, title + (" - so far" if partial else ""), 200)
    if args.json:
        report.write_json(args.json)


if __name__ == "__main__":
    raise SystemExit(main())
