"""UPLOAD -> PAGES: sniff what a document is, check it against the limits, render its pages to images.

``open_document`` is the entry; ``parse_page_selection`` reads ``--pages``. PDFs go through pypdfium2 (all
PDFium calls serialised process-wide, see ``documents.pdf``), images through Pillow. Nothing here imports torch,
and pypdfium2/Pillow are imported only when a document is opened.
"""

from gnosis_ocr.documents.model import DocumentLimits, Kind, Page, PageError
from gnosis_ocr.documents.pages import parse_page_selection
from gnosis_ocr.documents.render import Document, open_document
from gnosis_ocr.documents.sniff import SUPPORTED, sniff

__all__ = [
    "SUPPORTED",
    "Document",
    "DocumentLimits",
    "Kind",
    "Page",
    "PageError",
    "open_document",
    "parse_page_selection",
    "sniff",
]
