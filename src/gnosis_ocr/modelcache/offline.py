"""Settle the process environment so that a resolved model loads with zero network calls.

huggingface_hub reads ``HF_HUB_OFFLINE`` and ``HF_HUB_DISABLE_TELEMETRY`` once, at import. Entry points call
``prepare_environment`` before anything imports it; ``go_offline`` flips an already imported copy too (after a
warm in ``auto`` mode, the same process loads offline).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, MutableMapping

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def prepare_environment(environ: MutableMapping[str, str], *, offline: bool) -> None:
    """Telemetry off always (it is also what makes huggingface_hub call ``/api/agent-harnesses``);
    offline flags when the model must not be downloaded."""
    environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if offline:
        for var in OFFLINE_VARS:
            environ[var] = "1"


def go_offline(environ: MutableMapping[str, str]) -> None:
    """From now on huggingface_hub and transformers refuse the network, imported or not."""
    prepare_environment(environ, offline=True)
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]
        constants.HF_HUB_DISABLE_TELEMETRY = True  # type: ignore[attr-defined]


def is_offline(environ: MutableMapping[str, str]) -> bool:
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        return bool(constants.HF_HUB_OFFLINE)
    return environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def hub_online(environ: MutableMapping[str, str]) -> Iterator[None]:
    """Lift huggingface_hub's offline flag for one deliberate download (warm, repair, refresh), then restore it.

    The network guard is not touched: in strict mode it still refuses, which is the point of strict mode.
    """
    was_offline = is_offline(environ)
    if not was_offline:
        yield
        return
    saved = {var: environ.pop(var) for var in OFFLINE_VARS if var in environ}
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        environ.update(saved)
        if constants is not None:
            constants.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]
