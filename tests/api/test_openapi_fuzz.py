"""Schemathesis over the app's own OpenAPI description, sent over real HTTP to a live uvicorn on loopback.

Every operation is fuzzed, the multipart upload included (schemathesis builds the bodies from the ``requestBody``
that ``routes/jobs.py`` declares). Checks on every response:

- ``not_a_server_error``: no 5xx, whatever the input;
- ``status_code_conformance``: the status is one the operation documents;
- ``content_type_conformance``: the Content-Type is one documented for that status;
- ``response_schema_conformance``: the body matches the documented schema;
- ``errors_are_gnosis_json`` (here): every error is ``{"error": {"type", "message", "hint"}}`` (docs/API.md). The
  job routes document FastAPI's default ``HTTPValidationError`` (``{"detail": [...]}``, nothing required) for 422,
  which any JSON object satisfies, so ``response_schema_conformance`` alone would not notice the shape.

Random job ids name no job, so hooks swap in real ones some of the time (and real documents for some uploads):
the 200 bodies and the 422s of the other parameters get validated too, not only 404s. Generation is derandomized
(a failure reproduces); the job ids differ from run to run, but they are drawn from the same positions.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gnosis_ocr.api import create_app
from gnosis_ocr.settings import Settings
from tests.api.conftest import make_settings, wait_for
from tests.api.jobclient import submit, wait_finished
from tests.documents import make

KEY = "fuzz-k3y"
MAX_EXAMPLES = 10  # per operation, fuzzing phase; the examples and coverage phases add their own cases
ERROR_KEYS = {"type", "message", "hint"}
SMALL_PDF = make.text_pdf([["fuzzed upload"]])
UPLOAD_FIELDS = ("file", "engine", "pages", "text_layer")


def _settings(root: Path) -> Settings:
    return make_settings(
        root / "cache" / "huggingface",
        engine="fake",
        storage=str(root / "storage"),
        api_key=KEY,
        max_bytes=256 * 1024,
        max_upload_bytes=1024 * 1024,
        max_files=4,
        max_pages=20,
    )


# The description this file fuzzes is built from the app code; test_the_served_description_is_the_fuzzed_one
# proves the live server serves the same one.
SPEC: dict[str, Any] = create_app(_settings(Path("/nonexistent/gnosis-fuzz"))).openapi()
schema = schemathesis.openapi.from_dict(SPEC)
schema.config.update(headers={"X-API-Key": KEY})  # every case carries the key, so the routes are reached


@schemathesis.check
def errors_are_gnosis_json(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """A 4xx answer is the API's one error shape, with a type and a message that say something."""
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), f"{response.status_code} answered as {content_type!r}"
    body = response.json()
    assert isinstance(body, dict) and list(body) == ["error"], f"not the error shape: {response.text[:200]}"
    error = body["error"]
    assert isinstance(error, dict) and set(error) == ERROR_KEYS, f"not the error shape: {response.text[:200]}"
    assert isinstance(error["type"], str) and error["type"], error
    assert isinstance(error["message"], str) and error["message"], error
    assert error["hint"] is None or isinstance(error["hint"], str), error
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    errors_are_gnosis_json,
]


class ErrorLog(logging.Handler):
    """ERROR records of the server (the catch-all logs an exception no handler took, uvicorn one that broke a
    response after it started): what a status code cannot show, such as a stream cut off half-way."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


ERRORS = ErrorLog()


class Jobs:
    """Real job ids for the hooks, by what an operation may do to them."""

    done: tuple[str, ...] = ()  # finished: read and cancelled (409), never deleted
    delete: tuple[str, ...] = ()  # disposable
    storage: Path | None = None  # the server's GNOSIS_STORAGE


@schema.hook
def flatmap_path_parameters(context: schemathesis.HookContext, path_parameters: dict[str, Any] | None) -> Any:
    """Sometimes a real job id (and then a real page number) in place of the generated one."""
    operation = context.operation
    if operation is None or not isinstance(path_parameters, dict) or "job_id" not in path_parameters:
        return st.just(path_parameters)
    pool = Jobs.delete if operation.method.upper() == "DELETE" else Jobs.done
    real = [{**path_parameters, "job_id": job_id} for job_id in pool]
    if "n" in path_parameters:
        real += [{**params, "n": n} for params in real for n in (1, 2)]
    return st.sampled_from([path_parameters, *real])


@schema.hook
def flatmap_case(context: schemathesis.HookContext, case: schemathesis.Case) -> Any:
    """An upload as generated, with only its known fields, or with a real PDF as its first file too.

    The description does not say ``additionalProperties: false`` but the server refuses unknown fields (400), so
    nearly every generated body would stop there; the other two variants carry the fuzzed option values on to the
    document checks and, with the PDF, to a created job (202)."""
    if case.operation.label != "POST /api/v1/jobs" or not isinstance(case.body, dict):
        return st.just(case)
    return st.sampled_from(["as generated", "known fields", "a real PDF"]).map(lambda variant: _upload(case, variant))


def _upload(case: schemathesis.Case, variant: str) -> schemathesis.Case:
    if variant != "as generated":
        body = {name: value for name, value in case.body.items() if name in UPLOAD_FIELDS}
        if variant == "a real PDF":
            files = body.get("file")
            body["file"] = [SMALL_PDF, *(files[1:] if isinstance(files, list) else [])]
        case.body = body
    return case


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("openapi-fuzz")
    Jobs.storage = root / "storage"
    loggers = [logging.getLogger(name) for name in ("gnosis_ocr", "uvicorn.error")]
    for logger in loggers:
        logger.addHandler(ERRORS)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(create_app(_settings(root)), log_config=None, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="fuzz-uvicorn", daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), 10, "uvicorn to start")
    assert server.started, "uvicorn exited during start-up"
    try:
        with httpx.Client(base_url=url, timeout=30, trust_env=False, headers={"X-API-Key": KEY}) as client:
            wait_for(lambda: client.get("/readyz").status_code == 200, 30, "readyz")
            two_pages = make.text_pdf([["first page"], ["second page"]])
            done = submit(client, [("fuzz.pdf", two_pages)], text_layer="never")["id"]
            assert wait_finished(client, done)["status"] == "done"
            Jobs.done = (done,)
            Jobs.delete = tuple(submit(client, [(f"delete-{i}.pdf", two_pages)])["id"] for i in range(3))
        yield url
    finally:
        server.should_exit = True
        thread.join(15)
        for logger in loggers:
            logger.removeHandler(ERRORS)
        assert not thread.is_alive(), "server did not stop within 15 s"


def test_the_served_description_is_the_fuzzed_one(base_url: str) -> None:
    served = httpx.get(f"{base_url}/openapi.json", trust_env=False)
    assert served.status_code == 200 and served.json() == SPEC


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    # a multipart body of random bytes is slow to generate and often filtered; neither is a fault of the API
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
def test_every_operation_answers_within_its_contract(case: schemathesis.Case, base_url: str) -> None:
    phase = case.meta.phase.name.value if case.meta is not None else None
    if phase == "coverage" and "job_id" in case.path_parameters:
        # The coverage phase (boundary and wrong-type values for every parameter) runs no hooks and sends job id
        # "0", which the id check answers 404 before any other parameter is looked at. With a real job the page
        # number and the query reach FastAPI's validation (n=0, n="AAA", text="null", ...): 422 in our shape.
        case.path_parameters["job_id"] = (Jobs.delete if case.method.upper() == "DELETE" else Jobs.done)[0]
    case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=30)


def test_afterwards_the_server_is_well_and_every_job_ends(base_url: str) -> None:
    """The uploads the fuzzing got accepted (fuzzed engine, pages and text_layer values on a real PDF) all finish;
    none is left queued or processing, and nothing was logged as an unexpected error."""
    with httpx.Client(base_url=base_url, timeout=30, trust_env=False, headers={"X-API-Key": KEY}) as client:
        assert client.get("/healthz").status_code == 200
        assert Jobs.storage is not None
        ids = sorted(p.name for p in (Jobs.storage / "jobs").iterdir())
        assert Jobs.done[0] in ids and len(ids) > 1, ids  # the fixture's job and the uploads the fuzzing made
        deadline = time.monotonic() + 60
        statuses: dict[str, str] = {}
        while time.monotonic() < deadline:
            statuses = {job_id: client.get(f"/api/v1/jobs/{job_id}").json()["status"] for job_id in ids}
            if all(status in ("done", "failed", "cancelled") for status in statuses.values()):
                break
            time.sleep(0.2)
        assert all(status in ("done", "failed", "cancelled") for status in statuses.values()), statuses
    unexpected = [f"{r.name}: {r.getMessage()}" for r in ERRORS.records]
    assert unexpected == [], unexpected
