"""The result of one document: per-page Markdown with timings and sources, combined Markdown, JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from gnosis_ocr.documents.model import WordBox
from gnosis_ocr.engines.base import EngineInfo, Source


@dataclass(frozen=True)
class PageResult:
    number: int
    markdown: str
    seconds: float
    source: Source = "ocr"
    error: str | None = None
    width: int | None = None
    height: int | None = None
    meta: dict[str, object] = field(default_factory=dict)
    # Kept beside the result, not in it (to_dict leaves them out): the searchable PDF's text layer.
    word_boxes: tuple[WordBox, ...] = ()  # words on the page image (width x height pixels)
    points: tuple[float, float] | None = None  # the page's size in PDF points (PDF pages)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class DocumentResult:
    name: str
    kind: str
    page_count: int  # pages in the document (not only those processed)
    pages: tuple[PageResult, ...]
    engine: EngineInfo
    seconds: float

    @property
    def failed_pages(self) -> list[int]:
        return [p.number for p in self.pages if not p.ok]

    def markdown(self) -> str:
        """All pages, each after a marker line ``<!-- page N -->`` (failed pages say why, in the marker)."""
        parts = []
        for page in self.pages:
            if page.ok:
                parts.append(f"<!-- page {page.number} -->\n\n{page.markdown.strip()}\n")
            else:
                parts.append(f"<!-- page {page.number}: failed: {_comment_safe(page.error or '')} -->\n")
        return "\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "document": self.name,
            "kind": self.kind,
            "page_count": self.page_count,
            "seconds": round(self.seconds, 3),
            "engine": asdict(self.engine),
            "pages": [
                {
                    "page": p.number,
                    "markdown": p.markdown,
                    "source": p.source,
                    "seconds": round(p.seconds, 3),
                    "error": p.error,
                    "width": p.width,
                    "height": p.height,
                    "meta": p.meta,
                }
                for p in self.pages
            ],
        }


def _comment_safe(text: str) -> str:
    return text.replace("--", "- -").replace("\n", " ")
