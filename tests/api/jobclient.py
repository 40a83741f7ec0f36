"""Client-side helpers for the jobs API tests: upload, read the event stream, wait for a job to finish."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx


def upload(client: httpx.Client, files: list[tuple[str, bytes]], **fields: str) -> httpx.Response:
    parts = [("file", (name, data, "application/octet-stream")) for name, data in files]
    return client.post("/api/v1/jobs", files=parts, data=fields)


def submit(client: httpx.Client, files: list[tuple[str, bytes]], **fields: str) -> dict[str, Any]:
    response = upload(client, files, **fields)
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def events(client: httpx.Client, job_id: str, timeout: float = 60.0) -> list[tuple[str, dict[str, Any]]]:
    """Every event of the job's stream until it closes (after ``end``)."""
    out: list[tuple[str, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout
    with client.stream("GET", f"/api/v1/jobs/{job_id}/events", timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        name, data = "message", []
        for line in response.iter_lines():
            assert time.monotonic() < deadline, f"event stream still open after {timeout} s: {out[-3:]}"
            if line.startswith(":"):
                continue
            if line == "":
                if data:
                    out.append((name, json.loads("\n".join(data))))
                name, data = "message", []
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
    return out


def wait_finished(client: httpx.Client, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = client.get(f"/api/v1/jobs/{job_id}").json()
        if body.get("status") in ("done", "failed", "cancelled"):
            return body
        assert time.monotonic() < deadline, f"job {job_id} not finished after {timeout} s: {body.get('status')}"
        time.sleep(0.1)
