"""Run the gnosis-ocr CLI and SIGKILL it at its Nth filesystem write under a folder.

    python -m tests.support.killpoint --under DIR --at N [--trace FILE] -- cache warm ...

A fault injected at the lowest seam: an audit hook (``sys.addaudithook``) sees each ``open`` for writing,
``os.rename``/``os.replace``, ``os.remove`` and ``os.mkdir`` under DIR, and the process kills itself with
SIGKILL at the Nth one, before that operation runs. ``--at 0`` never kills; ``--trace`` records every event
(one per line) so a test can pick kill points spread over a whole run.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--under", required=True)
    parser.add_argument("--at", type=int, default=0)
    parser.add_argument("--trace")
    args, rest = parser.parse_known_args()
    if rest and rest[0] == "--":
        rest = rest[1:]
    under = os.path.realpath(args.under)
    count = 0
    lock = threading.Lock()
    trace = open(args.trace, "w", buffering=1) if args.trace else None  # noqa: SIM115

    def hook(event: str, ev_args: tuple[object, ...]) -> None:
        nonlocal count
        if event == "open":
            path, mode, flags = ev_args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & WRITE_FLAGS
            )
            if not writing:
                return
        elif event in ("os.rename", "os.remove", "os.mkdir"):
            path = ev_args[0]
        else:
            return
        if not isinstance(path, str | bytes | os.PathLike):
            return
        full = os.path.realpath(os.fsdecode(path))
        if not full.startswith(under):
            return
        with lock:
            count += 1
            n = count
        if trace is not None:
            trace.write(f"{n} {event} {os.path.relpath(full, under)}\n")
        if n == args.at:
            os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)
    sys.argv = ["gnosis-ocr", *rest]
    from gnosis_ocr.cli.main import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
