"""Exceptions to what a shell user sees: one message, one hint, one exit code.

====  =====================================================================
code  meaning
====  =====================================================================
0     success
1     a check found problems (``cache status``/``verify``: not complete)
2     bad usage or configuration
3     model absent or incomplete in the cache, and it could not be fetched: downloads are off, or the hub
      failed while a load tried to fill the miss (the cache fault is the cause; the message names it first)
4     the model hub could not be reached or refused the request (``cache warm``/``repair``, an unknown model)
5     the cache holds corrupt files
6     the cache is read-only where a write was needed
7     push to an object store failed
8     the network guard refused a connection (strict offline)
9     a document could not be read (unsupported, encrypted, broken, over a limit)
10    the OCR engine cannot run here (missing package, model or device)
11    some pages failed; the others were written
12    results could not be written (a full disk, a destination refusing writes; a rerun resumes)
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
    OutputWriteError,
    PushError,
)

EXIT_OK = 0
EXIT_FAULT = 1
EXIT_USAGE = 2
EXIT_DOCUMENT = 9
EXIT_ENGINE = 10
EXIT_PARTIAL = 11
EXIT_WRITE = 12

_CODES: tuple[tuple[type[GnosisError], int], ...] = (
    (ConfigError, EXIT_USAGE),
    # A load whose miss the hub could not fill raises ModelNotCachedError (from the HubError): 3, not 4, because
    # what must be fixed is the cache (the same fault is 3 under offline) and the fix is a warm or repair
    # wherever the hub is reachable; the network only says why the load could not fix it itself.
    (ModelNotCachedError, 3),
    (HubError, 4),
    (CacheCorruptError, 5),
    (CacheReadOnlyError, 6),
    (PushError, 7),
    (NetworkBlockedError, 8),
    (DocumentError, EXIT_DOCUMENT),
    (EngineError, EXIT_ENGINE),
    (OutputWriteError, EXIT_WRITE),
)


def exit_code(exc: GnosisError) -> int:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_FAULT
