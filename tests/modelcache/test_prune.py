"""prune plans before it deletes, and never touches what is in use."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from gnosis_ocr.modelcache.lease import Lease
from gnosis_ocr.modelcache.prune import execute_prune, plan_prune
from gnosis_ocr.modelcache.status import inspect_snapshot
from tests.modelcache.test_status import COMMIT, REPO, make_snapshot

OLD = "c" * 40
PINNED = "d" * 40


def _extra_snapshot(root: Path, commit: str, manifest: bool = True) -> None:
    layout = make_snapshot(root, ref=False, manifest=False)
    snap = layout.snapshot_dir(commit)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    if manifest:
        layout.manifest_path(commit).write_text("{}")


def test_plan_lists_unreferenced_expired_and_temp_but_keeps_refs_and_pins(tmp_path: Path) -> None:
    layout = make_snapshot(tmp_path)
    _extra_snapshot(tmp_path, OLD)
    _extra_snapshot(tmp_path, PINNED)
    layout.lease_path.write_text(
        json.dumps({"owner": "x", "host": "gone", "pid": 1, "acquired_at": 0, "expires_at": 1})
    )
    stray = layout.snapshot_dir(COMMIT) / "config.json.gnosis-tmp-otherhost-1-abcd"
    stray.write_bytes(b"x")
    fresh = layout.snapshot_dir(COMMIT) / "tokenizer.json.gnosis-tmp-otherhost-2-abcd"
    fresh.write_bytes(b"y")
    os.utime(stray, (time.time() - 7200, time.time() - 7200))

    plan = plan_prune(tmp_path, keep={REPO: {PINNED}})
    listed = {(i.kind, i.path.name) for i in plan.items}
    assert listed == {("temp", stray.name), ("lease", "lease.json"), ("snapshot", OLD)}
    assert all(p.exists() for p in (stray, layout.lease_path, layout.snapshot_dir(OLD)))  # planning deletes nothing

    execute_prune(plan)
    assert not stray.exists() and not layout.lease_path.exists()
    assert not layout.snapshot_dir(OLD).exists() and not layout.manifest_path(OLD).exists()
    assert fresh.exists() and layout.snapshot_dir(PINNED).exists()
    assert inspect_snapshot(layout, "main").complete


def test_an_unfinished_snapshot_under_a_live_lease_is_kept(tmp_path: Path) -> None:
    layout = make_snapshot(tmp_path)
    _extra_snapshot(tmp_path, OLD, manifest=False)
    lease = Lease(layout.lease_path, ttl=30)
    assert lease.try_acquire()
    try:
        assert plan_prune(tmp_path).items == ()
    finally:
        lease.release()
    assert [i.kind for i in plan_prune(tmp_path).items] == ["snapshot"]
