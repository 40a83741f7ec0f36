"""Cross-site requests and configuration mistakes against a real ``gnosis-ocr serve``: another site's page cannot
start jobs or warms on a server without a key, a Host the operator did not list is refused, a key setting that
holds no key refuses to start, and a document's non-ASCII name survives into the download's name."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest

from tests.api.jobclient import submit, upload, wait_finished
from tests.documents import make
from tests.e2e.serveproc import ROOT, ServeProcess
from tests.support.objectstores import free_port

pytestmark = pytest.mark.slow

ALLOWED = "https://tools.example.org"
EVIL = "https://evil.example"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    env = {"GNOSIS_ALLOWED_ORIGINS": f"{ALLOWED}/, https://other.example", "GNOSIS_ALLOWED_HOSTS": "127.0.0.1"}
    proc = ServeProcess(tmp_path_factory.mktemp("cross-site"), env)
    yield proc
    proc.close()


def _pdf() -> list[tuple[str, bytes]]:
    return [("page.pdf", make.text_pdf([["one page"]]))]


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": EVIL},
        {"Origin": EVIL, "Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "http://localhost:1", "Sec-Fetch-Site": "same-site"},  # another origin of the same site
        {"Origin": "null"},  # a sandboxed frame or a file:// page
    ],
)
def test_state_changing_requests_from_another_site_are_refused(server: ServeProcess, headers: dict[str, str]) -> None:
    job = submit(server.client, _pdf())  # the server's own clients go on
    client = server.client
    with httpx.Client(base_url=server.url, headers=headers, trust_env=False, timeout=10) as browser:
        refused = [
            upload(browser, _pdf()),
            browser.post("/api/v1/cache/warm"),
            browser.post(f"/api/v1/jobs/{job['id']}/cancel"),
            browser.delete(f"/api/v1/jobs/{job['id']}"),
        ]
    for response in refused:
        assert response.status_code == 403, (response.request.method, response.request.url, response.text)
        error = response.json()["error"]
        assert error["type"] == "CrossSiteError" and "GNOSIS_ALLOWED_ORIGINS" in error["hint"]
        assert set(error) == {"type", "message", "hint"}
    assert client.get(f"/api/v1/jobs/{job['id']}", headers=headers).status_code == 200  # reading is not refused
    assert wait_finished(client, job["id"])["status"] == "done"  # the refused DELETE deleted nothing


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, scripts, the Python client: no Origin, no Sec-Fetch-Site
        {"Sec-Fetch-Site": "same-origin"},  # the web UI's own fetch()
        {"Sec-Fetch-Site": "none"},  # the user's own action
        {"Origin": "http://127.0.0.1:{port}"},  # a browser without Sec-Fetch-Site, same origin
        {"Origin": ALLOWED, "Sec-Fetch-Site": "cross-site"},  # named in GNOSIS_ALLOWED_ORIGINS
        {"Origin": "HTTPS://OTHER.EXAMPLE"},
    ],
)
def test_same_origin_allowed_and_non_browser_requests_go_on(server: ServeProcess, headers: dict[str, str]) -> None:
    headers = {k: v.format(port=server.port) for k, v in headers.items()}
    with httpx.Client(base_url=server.url, headers=headers, trust_env=False, timeout=10) as client:
        job = submit(client, _pdf())
        assert wait_finished(client, job["id"])["status"] == "done"
        assert client.delete(f"/api/v1/jobs/{job['id']}").status_code == 204


def test_a_host_not_in_the_allowed_hosts_is_refused(server: ServeProcess) -> None:
    rebound = {"Host": f"attacker.example:{server.port}"}  # DNS rebinding: the name resolves to 127.0.0.1
    response = server.client.get("/api/v1/jobs/" + "a" * 22, headers=rebound)
    assert response.status_code == 421
    assert response.json()["error"]["type"] == "HostNotAllowedError"
    assert server.client.post("/api/v1/cache/warm", headers=rebound).status_code == 421
    assert server.client.get("/healthz", headers=rebound).status_code == 200  # probes come by address
    assert server.client.get("/readyz", headers=rebound).status_code == 200
    job = submit(server.client, _pdf())  # Host: 127.0.0.1:port is listed (any port)
    assert wait_finished(server.client, job["id"])["status"] == "done"


def test_a_non_ascii_file_name_survives_into_the_download(server: ServeProcess) -> None:
    name = "报告📄.png"
    job = submit(server.client, [(name, make_png())])
    assert job["documents"][0]["name"] == name
    assert wait_finished(server.client, job["id"])["status"] == "done"
    for ext in ("md", "json"):
        disposition = server.client.get(f"/api/v1/jobs/{job['id']}/result.{ext}").headers["content-disposition"]
        assert disposition.isascii()
        parts = dict(p.strip().split("=", 1) for p in disposition.split(";")[1:])
        assert parts["filename"] == f'"document-1.{ext}"' or parts["filename"] == f'"result.{ext}"', disposition
        assert parts["filename*"].startswith("UTF-8''")
        assert unquote(parts["filename*"].removeprefix("UTF-8''")) == f"报告📄.{ext}"
    tricky = submit(server.client, [('a"b;c\\..\\d/e%2F.png', make_png())])  # quotes, separators, a path
    wait_finished(server.client, tricky["id"])
    disposition = server.client.get(f"/api/v1/jobs/{tricky['id']}/result.md").headers["content-disposition"]
    filename_star = disposition.split("filename*=UTF-8''", 1)[1]
    assert ";" not in filename_star and '"' not in filename_star
    shown = unquote(filename_star)
    assert "/" not in shown and "\\" not in shown and not shown.startswith("."), shown


def make_png() -> bytes:
    from io import BytesIO

    from PIL import Image

    buffer = BytesIO()
    Image.new("RGB", (64, 32), "white").save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("value", [",", " , ", ",,,"])
def test_an_api_key_setting_that_holds_no_key_refuses_to_start(tmp_path: Path, value: str) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "GNOSIS_ENGINE": "fake",
        "GNOSIS_STORAGE": str(tmp_path / "storage"),
        "MODEL_CACHE_PATH": str(tmp_path / "cache"),
        "GNOSIS_API_KEY": value,
    }
    began = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gnosis_ocr", "serve", "--port", str(free_port())],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        output, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"the server started with GNOSIS_API_KEY={value!r} (authentication off): {output[-500:]!r}")
    text = output.decode(errors="replace")
    assert proc.returncode == 2, text
    assert "GNOSIS_API_KEY" in text and "no key" in text and "Traceback" not in text
    assert time.monotonic() - began < 30


def test_the_settings_are_documented() -> None:
    api = (ROOT / "docs" / "API.md").read_text()
    for name in ("GNOSIS_ALLOWED_ORIGINS", "GNOSIS_ALLOWED_HOSTS", "403", "421"):
        assert name in api, name
