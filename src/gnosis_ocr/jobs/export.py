"""A job's results as files: combined Markdown, Markdown per document, and a ZIP with the JSON and page images."""

from __future__ import annotations

import io
import re
import unicodedata
import zipfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

from gnosis_ocr.jobs.record import DocumentEntry, JobRecord, PageEntry
from gnosis_ocr.jobs.store import JobStore

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer


def _comment_safe(text: str) -> str:
    return text.replace("--", "- -").replace("\n", " ")


def _page_markdown(page: PageEntry) -> str:
    if page.status == "done":
        return f"<!-- page {page.page} -->\n\n{(page.markdown or '').strip()}\n"
    if page.status == "failed":
        return f"<!-- page {page.page}: failed: {_comment_safe(page.error or 'unknown error')} -->\n"
    return f"<!-- page {page.page}: pending -->\n"


def document_markdown(record: JobRecord, doc: DocumentEntry) -> str:
    """One document's pages, each after ``<!-- page N -->`` (as ``gnosis-ocr ocr`` writes them)."""
    parts = [_page_markdown(p) for p in record.document_pages(doc.index)]
    if not parts and doc.error is not None:
        parts.append(f"<!-- failed: {_comment_safe(doc.error.message)} -->\n")
    return "\n".join(parts)


def job_markdown(record: JobRecord) -> str:
    """Every document; with several, each starts with ``<!-- document: NAME -->``."""
    if len(record.documents) == 1:
        return document_markdown(record, record.documents[0])
    return "\n".join(
        f"<!-- document: {_comment_safe(doc.name)} -->\n\n{document_markdown(record, doc)}" for doc in record.documents
    )


def ascii_filename(name: str, fallback: str) -> str:
    """A plain-ASCII file name for Content-Disposition and ZIP members: letters, digits, ``._-`` only."""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", folded).strip("._")[:100]
    return cleaned or fallback


def document_stems(record: JobRecord) -> list[str]:
    """A distinct ASCII file stem per document (``scan.pdf`` -> ``scan``; repeats get ``-2``, ``-3``)."""
    stems: list[str] = []
    seen: set[str] = set()
    for doc in record.documents:
        base = ascii_filename(doc.name.rsplit(".", 1)[0] if "." in doc.name else doc.name, f"document-{doc.index + 1}")
        stem, k = base, 2
        while stem.lower() in seen:
            stem, k = f"{base}-{k}", k + 1
        seen.add(stem.lower())
        stems.append(stem)
    return stems


def iter_zip(record: JobRecord, store: JobStore, result_json: bytes) -> Iterator[bytes]:
    """The ZIP of a job, made as it is sent: ``<document>.md`` per document, ``result.json``, ``images/<n>.<ext>``
    for every stored page image. Memory holds one entry at a time, never the archive; nothing is spooled to disk."""
    out = _Chunks()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for doc, stem in zip(record.documents, document_stems(record), strict=True):
            archive.writestr(f"{stem}.md", document_markdown(record, doc))
        archive.writestr("result.json", result_json)
        yield out.take()
        for page in record.pages:
            image = store.image(record.id, page.n) if page.image else None
            if image is None:
                continue
            data, media_type = image
            name = f"images/{page.n}.{media_type.removeprefix('image/')}"
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_STORED)
            yield out.take()
    yield out.take()  # the central directory


class _Chunks(io.RawIOBase):
    """A write-only, unseekable file collecting what ZipFile writes until ``take`` hands it on."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        return len(chunk)

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data
