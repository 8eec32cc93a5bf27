"""A backend that answers with exact bytes, or misbehaves on purpose, and records each connection.

The attack battery needs what the recording backend of tests/dataplane/conftest.py cannot do: a
response head of 16 MiB, Content-Length and Transfer-Encoding together, a body longer than its
length, interim responses, a response that never ends, or no answer at all. Each connection keeps
the bytes the node sent and whether (and when) the node closed it, so a test can assert the fate
of the backend connection as well as what the client got.

It runs on the tests' background loop (tests/dataplane/conftest.py `loop_thread`), next to the
node. A test builds one with a script: an async function that gets the `RawConnection` once the
first request head arrived, writes what it likes, and returns (the connection then stays open,
reading, until the node closes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tests.dataplane.conftest import LoopThread, wait_until


@dataclass
class RawConnection:
    """One connection from the node: what it sent, and when it ended."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    received: bytearray = field(default_factory=bytearray)
    # monotonic time the node closed or reset the connection; None while it is open
    closed_at: float | None = None

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    async def read_head(self, count: int = 1) -> bytes:
        """Read until `count` request heads (without bodies) have arrived in all."""
        while self.received.count(b"\r\n\r\n") < count:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionResetError("the node closed before a complete head")
            self.received += data
        return bytes(self.received)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


Script = Callable[[RawConnection], Awaitable[None]]


def answer(data: bytes) -> Script:
    """A script writing `data` as it is, once the request head arrived."""

    async def script(connection: RawConnection) -> None:
        await connection.send(data)

    return script


async def hold(connection: RawConnection) -> None:
    """Never answer: the request waits as long as the node lets it."""


def trickle(head: bytes, piece: bytes, interval: float = 0.05) -> Script:
    """Write `head`, then `piece` every `interval` seconds until the node goes away."""

    async def script(connection: RawConnection) -> None:
        await connection.send(head)
        while True:
            await connection.send(piece)
            await asyncio.sleep(interval)

    return script


class RawBackend:
    def __init__(self, loop_thread: LoopThread, script: Script, name: str = "raw") -> None:
        self.name = name
        self.loop_thread = loop_thread
        self.script = script
        self.connections: list[RawConnection] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    def start(self) -> RawBackend:
        async def start() -> None:
            self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]

        self.loop_thread.run(start())
        return self

    def stop(self) -> None:
        async def stop() -> None:
            if self.server is not None:
                self.server.close()
            for connection in self.connections:
                connection.writer.transport.abort()

        self.loop_thread.run(stop())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = RawConnection(reader, writer)
        self.connections.append(connection)
        try:
            await connection.read_head()
            await self.script(connection)
            while data := await reader.read(65536):
                connection.received += data
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            connection.closed_at = time.monotonic()
            with contextlib.suppress(Exception):
                writer.transport.abort()

    def all_closed(self, timeout: float = 10.0) -> bool:
        """Whether the node closed every connection it opened to this backend (waits up to
        `timeout` seconds)."""
        return wait_until(
            lambda: bool(self.connections) and all(c.closed for c in self.connections), timeout
        )

    @property
    def requests(self) -> list[bytes]:
        return [bytes(connection.received) for connection in self.connections]
