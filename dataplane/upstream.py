"""Keep-alive connections to HTTP(S) backend servers, pooled per server.

A request borrows an idle connection when one exists (no await, no new socket) and gives it back
once the response has been read completely; a connection is only put back when both sides agreed
to keep it alive. The pool belongs to the node, not to a listener generation, so applying a new
snapshot does not throw the warm connections away.

`HttpUpstream` parses responses with httptools and hands each event to the client-side exchange
that currently owns the connection (`owner`), which implements the `Exchange` methods below.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import httptools

from dataplane.tls import backend_client_context

log = logging.getLogger(__name__)

PoolKey = tuple[str, int, bool]


class Exchange(Protocol):
    """What an upstream connection reports to the request that owns it."""

    def upstream_headers(self, upstream: HttpUpstream) -> None: ...
    def upstream_body(self, data: bytes) -> None: ...
    def upstream_complete(self, upstream: HttpUpstream) -> None: ...
    def upstream_lost(self, upstream: HttpUpstream) -> None: ...
    def upstream_error(self, upstream: HttpUpstream) -> None: ...
    def flush(self) -> None: ...
    def upstream_pause_client(self) -> None: ...
    def upstream_resume_client(self) -> None: ...


class HttpUpstream(asyncio.Protocol):
    """One connection to a backend server, reused for many requests."""

    __slots__ = (
        "closed",
        "headers",
        "headers_done",
        "idle_since",
        "interim",
        "key",
        "owner",
        "parser",
        "pool",
        "reason",
        "received",
        "reused",
        "status",
        "transport",
    )

    def __init__(self, pool: UpstreamPool, key: PoolKey) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.owner: Exchange | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        # per-response state
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.interim = False
        self.received = False

    def begin(self, owner: Exchange) -> None:
        """Give the connection to a request; the response state starts fresh."""
        self.owner = owner
        self.status = 0
        self.reason = b""
        self.headers = []
        self.headers_done = False
        self.interim = False
        self.received = False

    # -- asyncio callbacks -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is None:
            # A server talking out of turn on an idle connection: it cannot be trusted for reuse.
            self.close()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
            owner = self.owner
            if owner is not None:
                owner.flush()
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if cause is not None:
                log.error("error while handling a backend response", exc_info=cause)
            if self.owner is not None:
                self.owner.upstream_error(self)
            self.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        owner = self.owner
        if owner is not None:
            self.owner = None
            owner.upstream_lost(self)
        else:
            self.pool.discard(self)

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner.upstream_pause_client()

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.upstream_resume_client()

    # -- httptools callbacks ---------------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self.status = status
        if 100 <= status < 200 and status != 101:
            # 100 Continue and friends: the dataplane answered Expect itself; the final response
            # follows on this connection.
            self.interim = True
            return
        self.headers_done = True
        if self.owner is not None:
            self.owner.upstream_headers(self)

    def on_body(self, body: bytes) -> None:
        if self.owner is not None:
            self.owner.upstream_body(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            self.reason = b""
            self.headers = []
            return
        owner = self.owner
        if owner is not None:
            owner.upstream_complete(self)

    # -- control ---------------------------------------------------------------------------------

    @property
    def keep_alive(self) -> bool:
        return not self.closed and self.parser.should_keep_alive()

    def write(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def close(self) -> None:
        self.owner = None
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()


class UpstreamPool:
    """Idle keep-alive connections per (address, port, tls)."""

    def __init__(self, *, max_idle_per_server: int = 256, idle_timeout: float = 30.0) -> None:
        self.max_idle_per_server = max_idle_per_server
        self.idle_timeout = idle_timeout
        self._idle: dict[PoolKey, list[HttpUpstream]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def acquire(self, key: PoolKey) -> HttpUpstream | None:
        """An idle connection to the server, most recently used first, or None."""
        idle = self._idle.get(key)
        while idle:
            upstream = idle.pop()
            if not upstream.closed and not upstream.transport.is_closing():  # type: ignore[union-attr]
                upstream.reused = True
                return upstream
        return None

    async def connect(self, address: str, port: int, tls: bool) -> HttpUpstream:
        """A new connection; raises OSError (or ssl.SSLError) when the server cannot be reached."""
        loop = asyncio.get_running_loop()
        key = (address, port, tls)
        _, upstream = await loop.create_connection(
            lambda: HttpUpstream(self, key),
            address,
            port,
            ssl=backend_client_context() if tls else None,
        )
        return upstream

    def release(self, upstream: HttpUpstream) -> None:
        """Take a connection back after a complete response; closes it when the pool is full."""
        upstream.owner = None
        if upstream.closed:
            return
        idle = self._idle.setdefault(upstream.key, [])
        if len(idle) >= self.max_idle_per_server:
            upstream.close()
            return
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        upstream.idle_since = loop.time()
        idle.append(upstream)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.idle_timeout / 2, self._sweep)

    def discard(self, upstream: HttpUpstream) -> None:
        idle = self._idle.get(upstream.key)
        if idle and upstream in idle:
            idle.remove(upstream)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for upstream in idle:
                upstream.close()
        self._idle.clear()

    def idle_count(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    def _sweep(self) -> None:
        self._sweeper = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() - self.idle_timeout
        for key, idle in list(self._idle.items()):
            # Oldest first: release() appends, so stale connections sit at the front.
            stale = 0
            while stale < len(idle) and idle[stale].idle_since <= deadline:
                idle[stale].close()
                stale += 1
            del idle[:stale]
            if not idle:
                del self._idle[key]
        if self._idle:
            self._sweeper = loop.call_later(self.idle_timeout / 2, self._sweep)
