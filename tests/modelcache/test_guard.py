"""The network guard sees real sockets: it counts hub connections and refuses them when strict."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from gnosis_ocr.errors import NetworkBlockedError
from gnosis_ocr.modelcache.guard import NetworkGuard


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    srv = socket.create_server(("127.0.0.1", 0))
    srv.listen(8)
    yield srv
    srv.close()


@pytest.fixture
def guard() -> Iterator[NetworkGuard]:
    g = NetworkGuard.install()
    yield g
    g.strict = False


def _connect(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_counts_connections_to_the_watched_endpoint_only(guard: NetworkGuard, listener: socket.socket) -> None:
    hub_port = listener.getsockname()[1]
    other = socket.create_server(("127.0.0.1", 0))
    try:
        guard.watch_endpoint(f"http://127.0.0.1:{hub_port}")
        before = guard.total
        _connect(hub_port)
        assert guard.total == before + 2  # getaddrinfo + connect
        _connect(other.getsockname()[1])
        assert guard.total == before + 2
    finally:
        other.close()


def test_strict_refuses_before_any_byte_leaves(guard: NetworkGuard, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    guard.watch_endpoint(f"http://127.0.0.1:{port}")
    guard.strict = True
    listener.settimeout(0.2)
    with pytest.raises(NetworkBlockedError, match="strict offline mode"):
        _connect(port)
    with pytest.raises(TimeoutError):
        listener.accept()  # nothing ever connected


def test_public_hub_names_are_refused_before_dns(guard: NetworkGuard) -> None:
    guard.strict = True
    with pytest.raises(NetworkBlockedError):
        socket.getaddrinfo("huggingface.co", 443)
