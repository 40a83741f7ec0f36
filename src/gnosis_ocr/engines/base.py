"""PAGES -> TEXT: the one seam every OCR engine implements.

An engine turns rendered pages into Markdown. ``recognize`` answers one ``PageText`` per page, in order, and never
raises for one bad page: that page's ``error`` says what went wrong and the rest of the document goes on. Engine-wide
failures (missing package, model, device) raise ``EngineUnavailableError`` from ``load``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from gnosis_ocr.documents.model import Page

Source = Literal["ocr", "text-layer"]


@dataclass(frozen=True)
class EngineInfo:
    name: str  # "nanonets", "tesseract", "fake"
    model: str | None = None  # model repository id, or tesseract languages
    revision: str | None = None  # model commit sha, or engine library version
    device: str = "cpu"
    reason: str | None = None  # why this engine was chosen (auto)
    vlm: bool = False  # a vision-language model: keeps tables and equations, so a PDF text layer is not preferred


@dataclass(frozen=True)
class PageText:
    number: int  # 1-based page number in the document
    markdown: str
    seconds: float
    source: Source = "ocr"
    error: str | None = None
    meta: Mapping[str, object] = field(default_factory=dict)  # e.g. {"rotation": 90, "confidence": 91.2}

    @property
    def ok(self) -> bool:
        return self.error is None


@runtime_checkable
class Engine(Protocol):
    @property
    def info(self) -> EngineInfo: ...

    @property
    def batch_size(self) -> int:
        """How many pages ``recognize`` takes at once to best effect."""
        ...

    def load(self) -> None:
        """Load models or start workers; idempotent. Raises EngineUnavailableError."""

    def recognize(self, pages: Sequence[Page]) -> list[PageText]:
        """One PageText per page, same order. A failing page carries ``error``; nothing raises for it."""
        ...

    def close(self) -> None:
        """Release workers, memory, devices; idempotent."""
