"""Exceptions to what a shell user sees: one message, one hint, one exit code.

====  =====================================================================
code  meaning
====  =====================================================================
0     success
1     a check found problems (``cache status``/``verify``: not complete)
2     bad usage or configuration
3     model not in the cache and downloads are off
4     the model hub could not be reached or refused the request
5     the cache holds corrupt files
6     the cache is read-only where a write was needed
7     push to an object store failed
8     the network guard refused a connection (strict offline)
9     a document could not be read (unsupported, encrypted, broken, over a limit)
10    the OCR engine cannot run here (missing package, model or device)
11    some pages failed; the others were written
====  =====================================================================
"""

from __future__ import annotations

from gnosis_ocr.errors import (
    CacheCorruptError,
    CacheReadOnlyError,
    ConfigError,
    DocumentError,
    EngineError,
    GnosisError,
    HubError,
    ModelNotCachedError,
    NetworkBlockedError,
    PushError,
)

EXIT_OK = 0
EXIT_FAULT = 1
EXIT_USAGE = 2
EXIT_DOCUMENT = 9
EXIT_ENGINE = 10
EXIT_PARTIAL = 11

_CODES: tuple[tuple[type[GnosisError], int], ...] = (
    (ConfigError, EXIT_USAGE),
    (ModelNotCachedError, 3),
    (HubError, 4),
    (CacheCorruptError, 5),
    (CacheReadOnlyError, 6),
    (PushError, 7),
    (NetworkBlockedError, 8),
    (DocumentError, EXIT_DOCUMENT),
    (EngineError, EXIT_ENGINE),
)


def exit_code(exc: GnosisError) -> int:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_FAULT
