"""The layout engine behind the HTTP API: a job's pages carry their blocks and furniture in the job's JSON, and
/readyz names the engine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gnosis_ocr.engines.layout import find_layout_model
from gnosis_ocr.errors import EngineUnavailableError
from tests.api.conftest import Live, make_settings
from tests.api.jobclient import submit, wait_finished
from tests.support import layoutpages as lp

try:
    find_layout_model()
except EngineUnavailableError as exc:  # pragma: no cover - the dev install has it
    pytest.skip(f"no layout model here: {exc.message}", allow_module_level=True)


def test_a_job_read_by_the_layout_engine_carries_its_blocks(
    cache_root: Path, tmp_path: Path, live: Callable[..., Live]
) -> None:
    app = live(make_settings(cache_root, engine="layout", ocr_workers=1, storage=str(tmp_path / "storage")))
    pdf, _ = lp.layout_pdf(tmp_path / "report.pdf", [lp.report_page(1)])
    job = submit(app.client, [("report.pdf", pdf.read_bytes())], text_layer="never")
    final = wait_finished(app.client, job["id"], timeout=120)
    assert final["status"] == "done" and final["engine"]["name"] == "layout"
    (page,) = final["pages"]
    assert "<table><tr><td>Region</td>" in page["markdown"]
    assert "Valley Cooperative - Annual Report" not in page["markdown"]
    blocks, furniture = page["meta"]["blocks"], page["meta"]["furniture"]
    assert blocks[0]["type"] == "title" and [b["order"] for b in blocks] == list(range(len(blocks)))
    assert all(0 <= b["bbox"][0] < b["bbox"][2] <= page["width"] for b in blocks)
    assert ("header", "Valley Cooperative - Annual Report 2026") in {(b["type"], b["text"]) for b in furniture}
    assert app.client.get("/readyz").json()["engine"]["name"] == "layout"
