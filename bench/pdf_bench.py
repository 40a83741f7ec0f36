"""Searchable PDF benchmark: build time, size and peak memory of ``result.pdf`` for jobs of 100 and 500 pages.

    .venv/bin/python -m bench.pdf_bench [--pages 100,500] [--clean]

A job is laid out in a local JobStore as the service leaves it: per page a WebP display image (~2 MP; a letter page
of ~45 lines of text rendered from a real PDF, with scanner-like noise unless ``--clean``), its
``pages/<n>.words.json`` (the text layer's ~400 word boxes) and its Markdown in job.json. Five distinct pages repeat
across the job. Each size is built in a fresh process (``jobs.searchable.pdf_file`` over ``job_pages``, as the
route does), which reports its wall time, the PDF's bytes and its peak RSS over its RSS before the build (so the
numbers are the build's own, not the set-up's).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LINE = "The searchable layer lets a reader find and copy every word, page {p}, line {i}, Grüße Привет."


def prepare(root: Path, pages: int, *, noisy: bool) -> str:
    """A finished job of ``pages`` pages in a JobStore at ``root``; its id."""
    import numpy as np
    from PIL import Image
    from tests.documents import make

    from gnosis_ocr.documents.model import DocumentLimits
    from gnosis_ocr.documents.pdf import PdfPages
    from gnosis_ocr.jobs.record import DocumentEntry, JobRecord, PageEntry, new_job_id
    from gnosis_ocr.jobs.searchable import PageGeometry
    from gnosis_ocr.jobs.sink import display_image
    from gnosis_ocr.jobs.store import JobStore

    source = make.text_pdf([[LINE.format(p=p, i=i) for i in range(45)] for p in range(5)], font_size=10)
    rendered = PdfPages(source, name="bench.pdf", limits=DocumentLimits(render_workers=0))
    kinds = []
    rng = np.random.default_rng(7)
    for number in range(1, 6):
        page, _ = rendered.render(number, 10**10)
        if noisy:
            pixels = np.asarray(page.image, dtype=np.int16)
            pixels = pixels + rng.normal(0, 12, pixels.shape).astype(np.int16)
            page = type(page)(**{**page.__dict__, "image": Image.fromarray(pixels.clip(0, 255).astype(np.uint8))})
        geometry = PageGeometry(page.image.width, page.image.height, page.points, page.text_layer_boxes)
        kinds.append((display_image(page), geometry, page.text_layer or ""))
    rendered.close()
    store = JobStore(str(root))
    entries = []
    job_id = new_job_id()
    for n in range(1, pages + 1):
        image, geometry, text = kinds[(n - 1) % 5]
        store.put_image(job_id, n, image)
        store.put_words(job_id, n, geometry.to_json())
        entries.append(
            PageEntry(
                n=n,
                document=0,
                page=n,
                status="done",
                source="text-layer",
                width=geometry.width,
                height=geometry.height,
                markdown=text,
                image=True,
            )
        )
    document = DocumentEntry(index=0, name="bench.pdf", size_bytes=0, kind="pdf", page_count=pages, status="done")
    store.save(JobRecord(id=job_id, status="done", documents=[document], pages=entries))
    return job_id


def build(root: str, job_id: str) -> dict[str, float]:
    """In this process: build the job's PDF as the route does; time, size, peak RSS growth."""
    from gnosis_ocr.jobs.searchable import job_pages, pdf_file
    from gnosis_ocr.jobs.store import JobStore

    store = JobStore(root)
    record = store.load(job_id)
    assert record is not None
    import threading

    import psutil

    process = psutil.Process()
    before = process.memory_info().rss
    peak = [before]
    stop = threading.Event()

    def sample() -> None:  # ru_maxrss is the life's peak (imports included): sample the build's own
        while not stop.wait(0.01):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    with pdf_file(job_pages(record, store), spool_dir=Path(root)) as (out, count):
        seconds = time.perf_counter() - started
        size = out.seek(0, 2)
    stop.set()
    sampler.join()
    after = max(peak[0], process.memory_info().rss)
    return {
        "pages": count,
        "seconds": seconds,
        "mib": size / 2**20,
        "rss_before_mib": before / 2**20,
        "peak_growth_mib": (after - before) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", default="100,500")
    parser.add_argument("--clean", action="store_true", help="no scanner noise (smaller JPEGs)")
    parser.add_argument("--build", nargs=2, metavar=("ROOT", "JOB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        print(json.dumps(build(*args.build)))
        return
    print(f"{'pages':>6} {'build s':>8} {'s/page':>7} {'PDF MiB':>8} {'KiB/page':>9} {'peak RSS +MiB':>14}")
    for pages in (int(p) for p in args.pages.split(",")):
        with tempfile.TemporaryDirectory(prefix="pdf-bench-") as tmp:
            job_id = prepare(Path(tmp), pages, noisy=not args.clean)
            run = subprocess.run(
                [sys.executable, "-m", "bench.pdf_bench", "--build", tmp, job_id],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(run.stdout)
            print(
                f"{r['pages']:>6.0f} {r['seconds']:>8.2f} {r['seconds'] / r['pages']:>7.3f} {r['mib']:>8.1f} "
                f"{r['mib'] * 1024 / r['pages']:>9.0f} {r['peak_growth_mib']:>14.1f}"
            )


if __name__ == "__main__":
    main()
