"""HTTP edge (FastAPI): thin routes over the library, one error handler. Build the app with ``create_app``."""

from gnosis_ocr.api.app import create_app

__all__ = ["create_app"]
