"""Forward a Unix socket to a TCP port on loopback: how a test reaches a server inside a network namespace.

``python udsbridge.py SOCKET PORT`` (stdlib only) runs inside the namespace (``unshare -n``) next to the server:
a Unix socket lives in the filesystem, which the namespace shares, so the test's client connects to ``SOCKET``
(``httpx.HTTPTransport(uds=...)``) and every byte goes on to ``127.0.0.1:PORT`` there, whose loopback the test
cannot see. It exits when its parent (the server, which its shell became) exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.close()


async def _main(path: str, port: int) -> None:
    async def connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:  # the server is not listening yet: the client sees a closed connection and retries
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    parent = os.getppid()
    server = await asyncio.start_unix_server(connect, path)
    async with server:
        while os.getppid() == parent:
            await asyncio.sleep(0.2)


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], int(sys.argv[2])))
