"""Rich progress bars: bytes for long cache work (downloads, hashing, uploads), counts for pages and documents."""

from __future__ import annotations

import threading
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from gnosis_ocr.engines.base import EngineInfo


def count_bars(console: Console) -> Progress:
    """Bars of done/total (pages of a document, documents of a batch); off when the console is not a terminal."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )


def print_engine(console: Console, info: EngineInfo) -> None:
    """``engine: NAME (why auto chose it)`` on stderr, before the work starts."""
    console.print(f"engine: {info.name}" + (f" ({info.reason})" if info.reason else ""), markup=False, highlight=False)


class ByteProgress:
    """Implements the cache's Progress protocol; silent when stderr is not a terminal or ``enabled`` is False."""

    def __init__(self, console: Console, *, enabled: bool = True) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not (enabled and console.is_terminal),
            transient=False,
        )
        self._task: TaskID | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> ByteProgress:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def start(self, total_bytes: int, description: str) -> None:
        with self._lock:
            self._task = self._progress.add_task(description, total=total_bytes)

    def advance(self, nbytes: int) -> None:
        with self._lock:
            if self._task is None:
                self._task = self._progress.add_task("working", total=None)
            self._progress.advance(self._task, nbytes)
