"""Open and render documents in worker processes, so that a runaway page costs only itself.

A 4 KB PDF can make PDFium allocate without bound, and a hostile TIFF can keep Pillow busy for minutes. So the
native decoders run in worker processes (``gnosis_ocr.isolation.IsolatedPool``: fresh interpreters, one task each at
a time, a dead or late worker is that one task's outcome and is replaced), each worker under an address-space limit
(``RLIMIT_AS``, ``DocumentLimits.render_memory_bytes``) and each task under a wall-clock limit
(``render_timeout``). A page whose worker dies or runs late becomes that page's ``PageError``; the server process
only ever holds finished page images.

Two small pools per process, started lazily (a worker is started only when every started one is busy):

- *open*: opens a document and counts its pages (the upload check and ``open_document``), then lets it go;
- *render*: renders one page per task. A worker keeps the last document it rendered open, and a document's pages
  go back to the worker that has it open when that one is free, so a page costs one round trip, not a reopen.

Keeping them apart means an upload is never checked behind a page that is busy exhausting its limits.

Tasks name the document by path (bytes are spooled to a temporary file first, removed on close) and carry
everything a worker needs; workers hold no state a caller depends on, so any worker can serve any task.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

from gnosis_ocr.documents.model import DocumentLimits, Kind, Page
from gnosis_ocr.errors import (
    BrokenDocumentError,
    ConfigError,
    DocumentError,
    DocumentLimitError,
    EmptyDocumentError,
    EncryptedDocumentError,
    GnosisError,
    UnsupportedDocumentError,
)
from gnosis_ocr.isolation import Crashed, Done, Failed, IsolatedPool, Lost, Outcome, TimedOut

if TYPE_CHECKING:
    from gnosis_ocr.documents.render import _Pages

logger = logging.getLogger(__name__)

Role = Literal["open", "render"]

_REBUILT: Final[dict[str, type[GnosisError]]] = {
    cls.__name__: cls
    for cls in (
        DocumentError,
        UnsupportedDocumentError,
        EmptyDocumentError,
        EncryptedDocumentError,
        BrokenDocumentError,
        DocumentLimitError,
        ConfigError,
    )
}
_HOSTILE_HINT = (
    "Re-export the document from the program that made it (e.g. print it to a new PDF). If it is genuine and "
    "large, raise GNOSIS_RENDER_MEMORY_MIB or GNOSIS_RENDER_TIMEOUT_SECONDS."
)


# -- what travels between the server and a worker (picklable, and nothing else) -------------------------------


@dataclass(frozen=True)
class Source:
    """A document as a worker finds it. ``key`` changes when the file does, so a worker never serves a stale one."""

    path: str
    key: tuple[str, int, int, int]  # path, inode, size, mtime_ns
    kind: Kind
    name: str
    limits: DocumentLimits

    @classmethod
    def of(cls, path: Path, *, kind: Kind, name: str, limits: DocumentLimits) -> Source:
        stat = path.stat()
        return cls(str(path), (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns), kind, name, limits)


@dataclass(frozen=True)
class _Open:
    source: Source


@dataclass(frozen=True)
class _Render:
    source: Source
    number: int
    pixels_left: int


@dataclass(frozen=True)
class _Forget:
    key: tuple[str, int, int, int]


Task: TypeAlias = _Open | _Render | _Forget


@dataclass(frozen=True)
class _Opened:
    page_count: int


@dataclass(frozen=True)
class _Rendered:
    page: Page
    cost: int


@dataclass(frozen=True)
class _Refused:
    """A ``GnosisError`` or ``OSError`` raised in the worker, by class name (rebuilt in the server)."""

    error: str
    message: str
    hint: str | None = None


Result: TypeAlias = _Opened | _Rendered | _Refused | None


# -- the worker side ---------------------------------------------------------------------------------------------


def build_handler(memory_bytes: int, keep_open: bool) -> _Handler:
    """Run once in each worker (an ``IsolatedPool`` handler factory): cap its address space, load the decoders."""
    import resource

    with contextlib.suppress(ValueError, OSError):  # a platform without RLIMIT_AS still gets the timeout
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes if hard < 0 else min(memory_bytes, hard), hard))
    import gnosis_ocr.documents.images
    import gnosis_ocr.documents.pdf  # noqa: F401  (imported once here, not on the first page)

    return _Handler(keep_open)


class _Handler:
    """A worker's document state: at most one open document (the last one rendered), closed when another comes."""

    def __init__(self, keep_open: bool) -> None:
        self._keep_open = keep_open
        self._key: tuple[str, int, int, int] | None = None
        self._backend: _Pages | None = None

    def __call__(self, task: Task) -> Result:
        if isinstance(task, _Forget):
            if task.key == self._key:
                self._drop()
            return None
        source = task.source
        try:
            backend = self._open(source)
            try:
                if isinstance(task, _Open):
                    return _Opened(backend.page_count)
                page, cost = backend.render(task.number, task.pixels_left)
                return _Rendered(page, cost)
            finally:
                if not self._keep_open:
                    self._drop()
        except MemoryError:
            self._drop()
            what, verb = (f"page {task.number}", "rendered") if isinstance(task, _Render) else ("it", "opened")
            message = f"{source.name}: {what} {_over_limits(source, verb)}"
            return _Refused("DocumentLimitError", message, _HOSTILE_HINT)
        except GnosisError as exc:
            return _Refused(type(exc).__name__, exc.message, exc.hint)
        except OSError as exc:
            return _Refused("OSError", str(exc))

    def _open(self, source: Source) -> _Pages:
        if self._backend is not None and self._key == source.key:
            return self._backend
        self._drop()
        from gnosis_ocr.documents.render import open_backend

        self._backend = open_backend(Path(source.path), source.kind, source.name, source.limits)
        self._key = source.key
        return self._backend

    def _drop(self) -> None:
        backend, self._backend, self._key = self._backend, None, None
        if backend is not None:
            backend.close()


# -- the server side ---------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Slot:
    pool: IsolatedPool[Task, Result]
    holding: tuple[str, int, int, int] | None = None  # the document its worker has open


@dataclass(eq=False)
class WorkerPool:
    """``size`` single-worker ``IsolatedPool``s, each lent to one caller at a time; threads share it safely.

    A caller waits only while every worker is busy. Workers start on first need and are replaced after a crash or a
    timeout by the ``IsolatedPool`` that holds them.
    """

    role: Role
    size: int
    memory_bytes: int
    timeout: float
    _slots: list[_Slot] = field(init=False)
    _idle: list[_Slot] = field(init=False)
    _ready: threading.Condition = field(init=False, default_factory=threading.Condition)

    def __post_init__(self) -> None:
        factory = functools.partial(build_handler, self.memory_bytes, self.role == "render")
        name = "document opener" if self.role == "open" else "page renderer"
        self._slots = [
            _Slot(IsolatedPool(factory, workers=1, timeout=self.timeout, name=name)) for _ in range(self.size)
        ]
        self._idle = list(self._slots)

    @property
    def pids(self) -> list[int]:
        """The live workers' process ids (for tests and logs)."""
        return [pid for slot in self._slots for pid in slot.pool.pids]

    def start(self) -> None:
        """Start every worker now rather than on first need (``EngineError`` if one cannot start)."""
        for slot in self._slots:
            slot.pool.start()

    def run(self, task: _Open | _Render) -> Outcome[Result]:
        """Run one task on a worker (the one that has its document open, when that one is free)."""
        slot = self._take(task.source.key)
        try:
            outcome = slot.pool.run([task])[0]
            # a worker that died or was killed is replaced by one with nothing open
            slot.holding = task.source.key if self.role == "render" and isinstance(outcome, Done) else None
        except BaseException:
            slot.holding = None
            raise
        finally:
            self._give_back(slot)
        return outcome

    def forget(self, key: tuple[str, int, int, int]) -> None:
        """Have an idle worker close ``key``'s document now. Never waits (it may run from a finalizer): a busy
        worker closes it when its next task names another document."""
        if not self._ready.acquire(blocking=False):
            return
        try:
            slot = next((s for s in self._idle if s.holding == key), None)
            if slot is None:
                return
            self._idle.remove(slot)
        finally:
            self._ready.release()
        try:
            slot.pool.run([_Forget(key)])
            slot.holding = None
        finally:
            self._give_back(slot)

    def close(self) -> None:
        for slot in self._slots:
            slot.pool.close()

    def _take(self, key: tuple[str, int, int, int]) -> _Slot:
        with self._ready:
            while not self._idle:
                self._ready.wait()
            # its own document open > a started worker (least recently used first) > a worker yet to start
            slot = min(
                self._idle,
                key=lambda s: (s.holding != key, not s.pool.pids, s.holding is not None),
            )
            self._idle.remove(slot)
            return slot

    def _give_back(self, slot: _Slot) -> None:
        with self._ready:
            self._idle.append(slot)
            self._ready.notify()


_POOLS: dict[tuple[Role, int, int, int, float], WorkerPool] = {}
_POOLS_LOCK = threading.Lock()


def worker_pool(role: Role, limits: DocumentLimits) -> WorkerPool:
    """This process's pool for ``role`` under ``limits``' isolation settings, made on first use.

    Process-wide like the PDFium lock it replaces: documents are opened by the job runner, the CLI and the upload
    check, which share no owner below the entry points. Workers stop when the interpreter exits (or their parent
    dies: they exit when its end of their socket closes)."""
    key = (role, os.getpid(), limits.render_workers, limits.render_memory_bytes, limits.render_timeout)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = WorkerPool(
                role, limits.render_workers, limits.render_memory_bytes, limits.render_timeout
            )
        return pool


def open_isolated(source: Source) -> int:
    """Open ``source`` in an open worker and answer its page count; raises what opening it in-process would."""
    outcome = worker_pool("open", source.limits).run(_Open(source))
    value = _value(outcome, source, "the document", opening=True)
    if not isinstance(value, _Opened):  # pragma: no cover - the handler answers an _Open with _Opened or _Refused
        raise TypeError(f"unexpected answer to an open: {value!r}")
    return value.page_count


class IsolatedPages:
    """The ``_Pages`` backend of a document whose pages render in the render pool."""

    def __init__(self, source: Source, page_count: int, *, spooled: bool) -> None:
        self.page_count = page_count
        self._source = source
        self._spooled = spooled  # the file is our copy of the caller's bytes: removed on close
        self._pool = worker_pool("render", source.limits)

    def render(self, number: int, pixels_left: int) -> tuple[Page, int]:
        outcome = self._pool.run(_Render(self._source, number, pixels_left))
        value = _value(outcome, self._source, f"page {number}", opening=False)
        if not isinstance(value, _Rendered):  # pragma: no cover - as above
            raise TypeError(f"unexpected answer to a render: {value!r}")
        return value.page, value.cost

    def close(self) -> None:
        try:
            self._pool.forget(self._source.key)
        finally:
            if self._spooled:
                with contextlib.suppress(FileNotFoundError):
                    Path(self._source.path).unlink()


def _value(outcome: Outcome[Result], source: Source, what: str, *, opening: bool) -> Result:
    """The worker's answer, or the exception the caller sees: a dead or late worker is over the limits."""
    if isinstance(outcome, Done):
        value = outcome.value
        if isinstance(value, _Refused):
            raise _rebuild(value)
        return value
    if isinstance(outcome, Crashed | TimedOut):
        how = f"its worker died ({outcome.describe()})" if isinstance(outcome, Crashed) else "it ran out of time"
        logger.warning("document %s: %s: %s after %.1f s", source.name, what, how, outcome.seconds)
        verb = "opened" if opening else "rendered"
        raise DocumentLimitError(f"{source.name}: {what} {_over_limits(source, verb)}", hint=_HOSTILE_HINT)
    if isinstance(outcome, Failed):  # a bug or an unexpected library error in the worker: the page's error
        raise RuntimeError(outcome.message)
    if isinstance(outcome, Lost):
        raise RuntimeError(outcome.message)
    raise TypeError(f"unexpected outcome {outcome!r}")  # pragma: no cover


def _over_limits(source: Source, verb: str) -> str:
    memory = _human(source.limits.render_memory_bytes)
    kind = "PDF" if source.kind == "pdf" else "image"
    return (
        f"could not be {verb} within {memory} / {source.limits.render_timeout:g} s "
        f"(GNOSIS_RENDER_MEMORY_MIB / GNOSIS_RENDER_TIMEOUT_SECONDS): the {kind} may be malformed or hostile."
    )


def _human(size: int) -> str:
    if size % 2**30 == 0:
        return f"{size // 2**30} GiB"
    return f"{size / 2**20:,.0f} MiB"


def _rebuild(refused: _Refused) -> Exception:
    if refused.error == "OSError":
        return OSError(refused.message)
    cls = _REBUILT.get(refused.error, DocumentError)
    return cls(refused.message, hint=refused.hint)
