from __future__ import annotations

import pytest

from gnosis_ocr.documents import DocumentLimits


@pytest.fixture
def small() -> DocumentLimits:
    """Limits that render pages small, so the tests stay fast; the defaults get their own tests."""
    return DocumentLimits(target_pixels=120_000, min_long_side=256)
