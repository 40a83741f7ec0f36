"""The browser UI: static files only (``static/``), served by ``gnosis_ocr.api.routes.web``.

No logic lives here and nothing is built: ``index.html``, ES modules and one stylesheet, all talking to the
documented HTTP API (docs/API.md) with ``fetch``. No CDN, no bundler, no inline scripts or styles, so the page
runs under a strict Content-Security-Policy.
"""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"

__all__ = ["STATIC_DIR"]
