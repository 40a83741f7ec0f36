"""A full disk under the job storage (a real tmpfs, filled by the test): uploads are refused with 507 and
Retry-After, nothing half-written stays behind, a running job keeps going in memory and is saved once space
returns, /readyz says storage is failing meanwhile, and the next job runs as usual."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gnosis_ocr.jobs.store import JobStore
from tests.api.conftest import Live, make_settings, wait_for
from tests.api.jobclient import submit, upload, wait_finished
from tests.documents import make

SIZE = "6m"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs (root only)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Fill the disk to the last byte with one file; returns it (delete it to free the space)."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as out:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * size)
    return filler


def test_a_full_disk_costs_an_upload_a_507_and_the_worker_survives(
    small_disk: Path, cache_root: Path, live: Callable[..., Live]
) -> None:
    storage = small_disk / "storage"
    settings = make_settings(cache_root, engine="fake", storage=str(storage), fake_engine_delay=0.3)
    app = live(settings)
    wait_for(app.ready, 30, "readyz")
    pdf = make.text_pdf([[f"page {i}"] for i in range(8)])

    # a job that starts with room, then the disk fills under it
    running = submit(app.client, [("long.pdf", pdf)], text_layer="never")
    wait_for(lambda: app.client.get(f"/api/v1/jobs/{running['id']}").json()["status"] == "processing", 30, "start")
    filler = fill(small_disk)

    refused = upload(app.client, [("late.pdf", pdf)])
    assert refused.status_code == 507, refused.text
    assert refused.headers["retry-after"]
    error = refused.json()["error"]
    assert error["type"] == "StorageFullError" and "space" in error["message"].lower()
    assert len(list((storage / "jobs").iterdir())) == 1  # nothing stored for the refused upload
    assert not any((storage / "staging").iterdir())

    final = wait_finished(app.client, running["id"], timeout=60)  # in memory the job goes on
    assert final["status"] == "done" and final["progress"]["pages_done"] == 8
    not_ready = wait_for(
        lambda: (r := app.client.get("/readyz")).status_code == 503 and r.json(), 10, "readyz to say storage fails"
    )
    assert "storage" in not_ready["reason"]

    filler.unlink()  # space returns: storage catches up, and the next job runs
    store = JobStore(str(storage))
    wait_for(lambda: (s := store.load(running["id"])) is not None and s.status == "done", 30, "the job saved")
    wait_for(app.ready, 30, "readyz again")
    again = submit(app.client, [("again.pdf", make.text_pdf([["one more"]]))], text_layer="never")
    assert wait_finished(app.client, again["id"], timeout=30)["status"] == "done"


def test_enospc_is_what_the_filler_sees(small_disk: Path) -> None:
    """The fixture really fills the disk (else the test above proves nothing)."""
    fill(small_disk)
    with pytest.raises(OSError) as caught:
        (small_disk / "one-more").write_bytes(b"x" * 4096)
    assert caught.value.errno == errno.ENOSPC
