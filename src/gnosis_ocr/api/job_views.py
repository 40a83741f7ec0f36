"""Jobs as readers see them, shared: one copy and one JSON body per job version.

Status polls and event streams read the same few running jobs over and over. The runner bumps a job's version at
every change; here a copy of the job is taken once per version and serialised once per (version, with or without
page text), so a poll of an unchanged job costs a dictionary lookup, and fifty event streams woken by one page
share one copy instead of making fifty. Jobs this instance does not hold (another instance's, or evicted) are read
from the store each time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from gnosis_ocr.api.schemas import job_out
from gnosis_ocr.jobs.record import JobRecord
from gnosis_ocr.jobs.runner import JobRunner

KEPT = 64  # jobs whose latest view is kept


@dataclass
class _View:
    version: int
    record: JobRecord  # shared by readers: never modified
    bodies: dict[bool, bytes] = field(default_factory=dict)  # text -> JSON


class JobViews:
    def __init__(self, runner: JobRunner) -> None:
        self.runner = runner
        self._lock = threading.Lock()
        self._views: OrderedDict[str, _View] = OrderedDict()

    def held(self, job_id: str) -> bool:
        """True when the job is in this instance's memory (reading it does no I/O)."""
        return self.runner.version(job_id) is not None

    def _view(self, job_id: str) -> _View | None:
        version = self.runner.version(job_id)
        if version is None:
            return None
        with self._lock:
            view = self._views.get(job_id)
            if view is not None and view.version == version:
                self._views.move_to_end(job_id)
                return view
        held = self.runner.held(job_id)
        if held is None:
            return None
        view = _View(*held)
        with self._lock:
            current = self._views.get(job_id)
            if current is None or current.version < view.version:
                self._views[job_id] = view
                self._views.move_to_end(job_id)
                while len(self._views) > KEPT:
                    self._views.popitem(last=False)
        return view

    def record(self, job_id: str) -> JobRecord:
        """The job (shared: do not modify). Store reads happen here for jobs not held: call from a thread then."""
        view = self._view(job_id)
        return view.record if view is not None else self.runner.snapshot(job_id)

    def json(self, job_id: str, *, text: bool = True) -> bytes:
        """The job as ``GET /api/v1/jobs/{id}`` answers it."""
        view = self._view(job_id)
        if view is None:
            return job_out(self.runner.snapshot(job_id), text=text).model_dump_json().encode()
        body = view.bodies.get(text)
        if body is None:
            body = job_out(view.record, text=text).model_dump_json().encode()
            view.bodies[text] = body
        return body
