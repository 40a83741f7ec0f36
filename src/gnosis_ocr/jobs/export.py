"""A job's results as files: combined Markdown, Markdown per document, and a ZIP with the JSON and page images."""

from __future__ import annotations

import re
import unicodedata
import zipfile
from typing import IO

from gnosis_ocr.jobs.record import DocumentEntry, JobRecord, PageEntry
from gnosis_ocr.jobs.store import JobStore


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


def write_zip(record: JobRecord, store: JobStore, out: IO[bytes], result_json: bytes) -> None:
    """``<document>.md`` per document, ``result.json``, ``images/<n>.png`` for every stored page image."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for doc, stem in zip(record.documents, document_stems(record), strict=True):
            archive.writestr(f"{stem}.md", document_markdown(record, doc))
        archive.writestr("result.json", result_json)
        for page in record.pages:
            if not page.image:
                continue
            png = store.image(record.id, page.n)
            if png is not None:
                archive.writestr(zipfile.ZipInfo(f"images/{page.n}.png"), png, compress_type=zipfile.ZIP_STORED)
