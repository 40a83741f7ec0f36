"""Imported at start-up by Python processes whose PYTHONPATH holds this folder (tests only; see
tests/support/tesseractfaults.py): with GNOSIS_TEST_TESSERACT_FAULT set, tesserocr fails natively on marked pages."""

import os

if os.environ.get("GNOSIS_TEST_TESSERACT_FAULT"):
    from tests.support.tesseractfaults import install

    install(os.environ["GNOSIS_TEST_TESSERACT_FAULT"])
