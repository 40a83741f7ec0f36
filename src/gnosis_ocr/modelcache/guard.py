"""The network guard: count, and in strict mode refuse, every attempt to reach a model hub.

It is an audit hook (``sys.addaudithook``) on ``socket.getaddrinfo`` and ``socket.connect``, so it sees every
connection Python makes, whatever library makes it. Audit hooks cannot be removed, so there is one guard per
process (``NetworkGuard.install()``); entry points set what it watches and whether it refuses.

Watched: the configured hub endpoint's host and port, plus the public hub hosts. Loopback traffic to anything
else (the service's own port, test servers) is not counted.
"""

from __future__ import annotations

import socket
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

from gnosis_ocr.errors import NetworkBlockedError

PUBLIC_HUB_HOSTS = frozenset(
    {
        "huggingface.co",
        "hf.co",
        "cdn-lfs.huggingface.co",
        "cdn-lfs.hf.co",
        "cas-bridge.xethub.hf.co",
        "cas-server.xethub.hf.co",
        "transfer.xethub.hf.co",
    }
)


@dataclass(frozen=True)
class Attempt:
    host: str
    port: int | None
    blocked: bool


class NetworkGuard:
    _instance: ClassVar[NetworkGuard | None] = None
    _install_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hosts: set[str] = set(PUBLIC_HUB_HOSTS)
        self._endpoints: set[tuple[str, int]] = set()
        self.strict = False
        self.counts: Counter[tuple[str, bool]] = Counter()
        self.attempts: list[Attempt] = []

    @classmethod
    def install(cls) -> NetworkGuard:
        """The process's guard, installing the audit hook on first use."""
        with cls._install_lock:
            if cls._instance is None:
                guard = cls()
                sys.addaudithook(guard._hook)
                cls._instance = guard
            return cls._instance

    def watch_endpoint(self, endpoint: str) -> None:
        parts = urlsplit(endpoint)
        if not parts.hostname:
            return
        port = parts.port or (443 if parts.scheme == "https" else 80)
        with self._lock:
            self._hosts.add(parts.hostname.lower())
            self._endpoints.add((parts.hostname.lower(), port))
            for info in _safe_resolve(parts.hostname):
                self._endpoints.add((info, port))

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def _matches(self, host: str, port: int | None) -> bool:
        host = host.lower()
        if port is None:
            return host in self._hosts and not _is_loopback_name(host)
        if (host, port) in self._endpoints:
            return True
        return host in self._hosts and not _is_loopback_name(host)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if event == "socket.getaddrinfo":
            host, port = args[0], args[1]
        elif event == "socket.connect":
            address = args[1]
            if not (isinstance(address, tuple) and len(address) >= 2):
                return  # unix sockets
            host, port = address[0], address[1]
        else:
            return
        if not isinstance(host, str | bytes):
            return
        host_s = host.decode() if isinstance(host, bytes) else host
        port_i = port if isinstance(port, int) else _int_or_none(port)
        if not self._matches(host_s, port_i):
            return
        blocked = self.strict
        with self._lock:
            self.counts[(host_s, blocked)] += 1
            if len(self.attempts) < 1000:
                self.attempts.append(Attempt(host_s, port_i, blocked))
        if blocked:
            raise NetworkBlockedError(
                f"Refused a connection to the model hub ({host_s}:{port_i}): the model cache is in strict "
                "offline mode and the model was already resolved locally.",
                hint="Something tried to download after start-up. Set GNOSIS_NETWORK_GUARD=count to allow it, "
                "or run `gnosis-ocr cache warm` so nothing is missing.",
            )


def _int_or_none(value: object) -> int | None:
    if isinstance(value, str | bytes) and value.isdigit():
        return int(value)
    return None


def _is_loopback_name(host: str) -> bool:
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")


def _safe_resolve(host: str) -> set[str]:
    """Literal addresses only; we never resolve names here (that would itself reach the network)."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return set()
    return {host}
