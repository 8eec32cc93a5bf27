"""Keep-alive connections to HTTP(S) backend servers, pooled per server.

A request borrows an idle connection when one exists (no await, no new socket) and gives it back
once the response has been read completely; a connection is only put back when both sides agreed
to keep it alive. The pool belongs to the node, not to a listener generation, so applying a new
snapshot does not throw the warm connections away.

`HttpUpstream` parses responses with httptools and hands each event to the client-side exchange
that currently owns the connection (`owner`, a dataplane.protocols.exchange.Exchange), through
the `Owner` methods below.

A response's heads (its interim 1xx heads and the final one together) may take at most
MAX_RESPONSE_HEAD bytes; a backend sending more gets its connection closed and the client a 502,
so a 16 MiB header block costs the node 64 KiB, not 16 MiB held and copied per read.

The pool also knows every open connection, idle or lent, per server address, so that a server
whose drain deadline has passed (or that went into maintenance) can have what remains on it
closed: `cut` (dataplane.node applies server states).
"""

from __future__ import annotations

import asyncio
import logging
import ssl

import httptools

from dataplane.heads import head_span

log = logging.getLogger(__name__)

# (address, port, TLS context or None): a connection made under one context (verified against a
# CA, or not verified) is never lent to a group that wants another.
PoolKey = tuple[str, int, ssl.SSLContext | None]

# Like the request side's MAX_HEADER_BYTES (dataplane.protocols.exchange).
MAX_RESPONSE_HEAD = 64 * 1024


class ResponseHeadTooLarge(Exception):
    """A backend's response heads passed MAX_RESPONSE_HEAD."""


class Owner:
    """What an upstream connection reports to the exchange that owns it
    (dataplane.protocols.exchange; `tunnel_data` only once an HTTP/1.1 exchange has made the
    connection a WebSocket tunnel). A base class rather than a typing Protocol: in the compiled
    build (upstream.pxd) the calls a response makes once per request go through a C vtable."""

    __slots__ = ()

    def upstream_headers(self, upstream: HttpUpstream) -> None:
        raise NotImplementedError

    def upstream_interim(self, upstream: HttpUpstream, head: bytes) -> None:
        raise NotImplementedError

    def upstream_body(self, data: bytes) -> None:
        raise NotImplementedError

    def upstream_complete(self, upstream: HttpUpstream) -> None:
        raise NotImplementedError

    def upstream_lost(self, upstream: HttpUpstream) -> None:
        raise NotImplementedError

    def upstream_error(self, upstream: HttpUpstream) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    def upstream_pause_client(self) -> None:
        raise NotImplementedError

    def upstream_resume_client(self) -> None:
        raise NotImplementedError

    def tunnel_data(self, data: bytes) -> None:
        raise NotImplementedError


class HttpUpstream:
    """One connection to a backend server, reused for many requests (an asyncio protocol by its
    methods, so the compiled build can make it an extension type).

    httptools frames the responses (lengths, chunks, keep-alive), but gets no per-header callbacks:
    once it has validated a head, the head's raw bytes are cut out of the read and handed to the
    owner in one piece, which costs a few C-level scans instead of a Python call per header.
    """

    __slots__ = (
        "buffer",
        "closed",
        "cursor",
        "head",
        "head_start",
        "head_total",
        "headers_done",
        "idle_mark",
        "in_head",
        "interim",
        "key",
        "owner",
        "parser",
        "partial",
        "partial_size",
        "pool",
        "reads",
        "received",
        "reused",
        "status",
        "stray",
        "transport",
        "tunnel",
    )

    def __init__(self, pool: UpstreamPool, key: PoolKey) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        # Made once connected: the parser holds this object through its callbacks, a cycle
        # that a failed connection attempt would leave to the cycle collector.
        self.parser: httptools.HttpResponseParser | None = None
        self.owner: Owner | None = None
        self.closed = False
        self.reused = False
        self.idle_mark = 0
        # where the response head being parsed lies: `buffer` is the current read; `partial`
        # holds the start of a head that arrived in earlier reads, piece by piece (joined once,
        # when the head is complete); `cursor` is where the next message of this read begins
        self.buffer = b""
        self.partial: list[bytes] = []
        self.partial_size = 0
        self.cursor = 0
        self.head_start = 0
        # bytes of this response's complete heads (interim ones included)
        self.head_total = 0
        self.in_head = False
        self.stray = False
        # per-response state
        self.status = 0
        # status line and header lines, each ending in CRLF, without the blank line
        self.head = b""
        self.headers_done = False
        self.interim = False
        self.received = False
        # reads so far: the client side checks a streaming response still moves
        self.reads = 0
        # After a 101 Switching Protocols the owner set this: bytes pass through unparsed, and
        # the connection is never pooled again.
        self.tunnel = False

    def begin(self, owner: Owner) -> None:
        """Give the connection to a request; the response state starts fresh."""
        self.owner = owner
        self.headers_done = False
        self.received = False
        self.head_total = 0

    # -- asyncio callbacks -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.parser = httptools.HttpResponseParser(self)
        self.pool.opened(self)

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is None:
            # A server talking out of turn on an idle connection: it cannot be trusted for reuse.
            self.close()
            return
        self.received = True
        self.reads += 1
        if self.tunnel:
            owner.tunnel_data(data)
            return
        self.buffer = data
        self.cursor = 0
        if self.partial:
            # A head continued from earlier reads goes on from this read's first byte.
            self.head_start = 0
        try:
            self.parser.feed_data(data)
            owner = self.owner
            if owner is not None:
                owner.flush()
        except httptools.HttpParserUpgrade as exc:
            self.buffer = b""
            owner = self.owner
            if owner is None or not self.tunnel:
                # 101 to a request that did not ask to switch protocols.
                if owner is not None:
                    owner.upstream_error(self)
                self.close()
                return
            owner.flush()
            rest = data[exc.args[0] :]
            if rest:
                owner.tunnel_data(rest)
            return
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, ResponseHeadTooLarge):
                self._head_too_large()
                return
            if cause is not None:
                log.error("error while handling a backend response", exc_info=cause)
            if self.owner is not None:
                self.owner.upstream_error(self)
            self.close()
            return
        if self.in_head:
            # The head continues in the next read: keep this read's part of it, uncopied when
            # that is all of the read.
            piece = self.buffer[self.head_start :] if self.head_start else self.buffer
            self.partial.append(piece)
            self.partial_size += len(piece)
            if self.partial_size + self.head_total > MAX_RESPONSE_HEAD:
                self._head_too_large()
                return
        self.buffer = b""
        if self.stray:
            # Bytes after the end of the response: the connection cannot be trusted for reuse.
            self.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        # The parser holds this connection through its callbacks: without it, a closed
        # connection is freed by reference counting, not left to the cycle collector.
        self.parser = None
        self.pool.lost(self)
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

    def on_message_begin(self) -> None:
        if self.owner is None:
            self.stray = True
        self.in_head = True
        # Only a head can precede another message in one read (interim responses have no body).
        self.head_start = self.cursor

    def on_headers_complete(self) -> None:
        self.in_head = False
        buffer = self.buffer
        start = self.head_start
        if self.partial:
            # The head began in earlier reads: join its pieces once, now that it is whole (the
            # rest of this read follows, so later positions shift with it).
            self.partial.append(buffer)
            buffer = self.buffer = b"".join(self.partial)
            self.partial = []
            self.partial_size = 0
        # Empty lines before a status line are allowed, and skipped.
        start, end = head_span(buffer, start)
        self.cursor = end + 4
        self.head_total += end + 4 - start
        if self.head_total > MAX_RESPONSE_HEAD:
            raise ResponseHeadTooLarge
        status = self.parser.get_status_code()
        self.status = status
        if 100 <= status < 200 and status != 101:
            # 100 Continue, 103 Early Hints and friends: the final response follows on this
            # connection; the owner decides whether its client sees this one.
            self.interim = True
            if self.owner is not None:
                self.owner.upstream_interim(self, buffer[start : end + 4])
            return
        self.head = buffer[start : end + 2]
        self.headers_done = True
        if self.owner is not None:
            self.owner.upstream_headers(self)

    def on_body(self, body: bytes) -> None:
        if self.owner is not None:
            self.owner.upstream_body(body)

    def on_message_complete(self) -> None:
        if self.tunnel:
            # The 101's "message" ends at its head; the connection now belongs to the tunnel.
            return
        if self.interim:
            self.interim = False
            return
        owner = self.owner
        if owner is not None:
            owner.upstream_complete(self)

    def _head_too_large(self) -> None:
        log.info(
            "backend %s sent a response head over %d bytes: answered 502, connection closed",
            self.transport.get_extra_info("peername") if self.transport is not None else None,
            MAX_RESPONSE_HEAD,
        )
        self.buffer = b""
        self.partial = []
        self.partial_size = 0
        owner = self.owner
        if owner is not None:
            owner.upstream_error(self)
        self.close()

    # -- control ---------------------------------------------------------------------------------

    def reusable(self) -> bool:
        """Whether another request may follow on this connection: it is open, and the response
        just read allowed it (HTTP/1.1 without Connection: close). A method, not a property,
        so that the exchange calls it in C."""
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
    """Idle keep-alive connections per (address, port, TLS context)."""

    __slots__ = (
        "_idle",
        "_loop",
        "_open",
        "_sweeper",
        "_sweeps",
        "idle_timeout",
        "max_idle_per_server",
    )

    def __init__(self, *, max_idle_per_server: int = 256, idle_timeout: float = 30.0) -> None:
        self.max_idle_per_server = max_idle_per_server
        self.idle_timeout = idle_timeout
        self._idle: dict[PoolKey, list[HttpUpstream]] = {}
        # Every open connection per (address, port), lent or idle: what `cut` closes. Kept per
        # connection, not per request, so the hot path does not pay for it.
        self._open: dict[tuple[str, int], set[HttpUpstream]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Sweeps run every idle_timeout / 2 and count up; a connection remembers the count when it
        # was released, so releasing costs no clock read.
        self._sweeps = 0

    def acquire(self, key: PoolKey) -> HttpUpstream | None:
        """An idle connection to the server, most recently used first, or None."""
        idle = self._idle.get(key)
        while idle:
            upstream = idle.pop()
            if not upstream.closed and not upstream.transport.is_closing():  # type: ignore[union-attr]
                upstream.reused = True
                return upstream
        return None

    async def connect(
        self, address: str, port: int, context: ssl.SSLContext | None
    ) -> HttpUpstream:
        """A new connection, over TLS with `context` when given; raises OSError (ssl.SSLError,
        ssl.SSLCertVerificationError among them) when the server cannot be reached or trusted.
        A verifying context checks the certificate against `address` (asyncio's server_hostname).
        """
        loop = asyncio.get_running_loop()
        key = (address, port, context)
        _, upstream = await loop.create_connection(
            lambda: HttpUpstream(self, key), address, port, ssl=context
        )
        return upstream

    def release(self, upstream: HttpUpstream) -> None:
        """Take a connection back after a complete response; closes it when the pool is full."""
        upstream.owner = None
        if upstream.closed:
            return
        idle = self._idle.get(upstream.key)
        if idle is None:
            idle = self._idle[upstream.key] = []
        elif len(idle) >= self.max_idle_per_server:
            upstream.close()
            return
        upstream.idle_mark = self._sweeps
        idle.append(upstream)
        if self._sweeper is None:
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(self.idle_timeout / 2, self._sweep)

    def opened(self, upstream: HttpUpstream) -> None:
        server = (upstream.key[0], upstream.key[1])
        connections = self._open.get(server)
        if connections is None:
            connections = self._open[server] = set()
        connections.add(upstream)

    def lost(self, upstream: HttpUpstream) -> None:
        server = (upstream.key[0], upstream.key[1])
        connections = self._open.get(server)
        if connections is not None:
            connections.discard(upstream)
            if not connections:
                del self._open[server]

    def open_count(self, address: str, port: int) -> int:
        """Connections open to one server, lent or idle."""
        return len(self._open.get((address, port), ()))

    def close_idle(self, address: str, port: int) -> int:
        """Close the idle connections to one server (it takes no new requests); returns how
        many. Those lent to a request in flight are left to finish."""
        closed = 0
        for key in [key for key in self._idle if key[0] == address and key[1] == port]:
            for upstream in self._idle.pop(key):
                upstream.close()
                closed += 1
        return closed

    def cut(self, address: str, port: int) -> int:
        """Close every connection to one server, idle or lent; returns how many.

        A request whose connection is cut sees it lost: one waiting for its response head gets
        a 502, one streaming a response has its client connection closed, as a backend that
        went away would have it.
        """
        self.close_idle(address, port)
        connections = list(self._open.pop((address, port), ()))
        for upstream in connections:
            upstream.closed = True
            # Not "reused": a request waiting on it must not go again to the same server.
            upstream.reused = False
            owner = upstream.owner
            upstream.owner = None
            if upstream.transport is not None:
                upstream.transport.abort()
            if owner is not None:
                owner.upstream_lost(upstream)
        return len(connections)

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
        self._sweeps += 1
        # Released three sweeps ago or earlier: idle for at least idle_timeout (at most 1.5 times
        # that when it is closed here).
        stale_mark = self._sweeps - 3
        for key, idle in list(self._idle.items()):
            # Oldest first: release() appends, so stale connections sit at the front.
            stale = 0
            while stale < len(idle) and idle[stale].idle_mark <= stale_mark:
                idle[stale].close()
                stale += 1
            del idle[:stale]
            if not idle:
                del self._idle[key]
        if self._idle:
            self._sweeper = asyncio.get_running_loop().call_later(
                self.idle_timeout / 2, self._sweep
            )
