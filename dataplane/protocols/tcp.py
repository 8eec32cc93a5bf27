"""TCP and TCP SSL listeners: a byte proxy, with TLS terminated by the listener for TCP SSL.

Each client connection gets its own backend connection, chosen at accept time (source-IP
persistence first, then the scheduler; one retry on another server if connecting fails). Bytes
flow both ways with backpressure: when one side's write buffer is full, reading from the other
side pauses. A half-close is passed on where the transport supports it (plain TCP); a TLS client
that closes ends the connection once the pending bytes are written.

With `proxy_protocol` v1 or v2, the backend connection starts with a PROXY protocol header
carrying the client's and the listener's address and port (dataplane.proxy_protocol).

With a bandwidth limit (seed 000), bytes to the client go through the listener's token bucket;
while it is in debt, reading from the backend pauses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from dataplane.balancing import Backend
from dataplane.bandwidth import ThrottledWriter
from dataplane.descriptors import EXHAUSTED
from dataplane.protocols.gate import BackendReadGate

if TYPE_CHECKING:
    from dataplane.protocols import ListenerHandle, ListenerSettings

log = logging.getLogger(__name__)


class TcpProxy(BackendReadGate):
    """The client side of one TCP or TCP SSL connection."""

    __slots__ = (
        "backend",
        "chosen",
        "client_eof",
        "closed",
        "connect_at",
        "connect_task",
        "connected_at",
        "idle_handle",
        "last_activity",
        "loop",
        "peer_ip",
        "peer_port",
        "pending",
        "received",
        "registered",
        "retried",
        "runtime",
        "sent",
        "settings",
        "started",
        "termination",
        "throttled",
        "transport",
        "upstream",
        "upstream_eof",
        "writer",
        "writing_paused",
    )

    def __init__(self, runtime: ListenerHandle) -> None:
        self.runtime = runtime
        self.settings: ListenerSettings = runtime.settings  # type: ignore[assignment]
        self.loop = runtime.loop
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.upstream: TcpUpstream | None = None
        self.backend: Backend | None = None
        self.connect_task: asyncio.Task[None] | None = None
        self.peer_ip = ""
        self.pending: list[bytes] = []
        self.registered = False
        self.closed = False
        self.retried = False
        self.client_eof = False
        self.upstream_eof = False
        self.idle_handle: asyncio.TimerHandle | None = None
        self.last_activity = 0.0
        # backpressure and bandwidth: reading from the backend is paused while either holds
        self.writing_paused = False
        self.throttled = False
        self.writer: ThrottledWriter | None = None
        # For the access log (dataplane.accesslog): the connection's times, bytes, server and
        # why it ended.
        self.peer_port = 0
        self.started = self.connect_at = self.connected_at = 0.0
        self.chosen: Backend | None = None
        self.received = self.sent = 0
        self.termination = ""

    # -- client side -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        settings = self.settings
        if self.runtime.settings is None:
            # The listener stopped while this connection was still in its TLS handshake.
            self.closed = True
            transport.abort()
            return
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        stats = settings.stats
        if settings.tls is not None:
            stats.tls_handshakes += 1
        if settings.acl is not None and not settings.acl.allows(self.peer_ip):
            stats.denied_connections += 1
            self.closed = True
            transport.abort()
            return
        self.registered = True
        self.started = time.monotonic()
        self.peer_port = peer[1] if peer else 0
        self.runtime.connections.add(self)
        stats.active_connections += 1
        stats.total_connections += 1
        stats.requests += 1
        if settings.bucket is not None:
            self.writer = ThrottledWriter(
                transport.write,  # type: ignore[attr-defined]
                settings.bucket,
                pause_reading=self._bandwidth_pause,
                resume_reading=self._bandwidth_resume,
                loop=self.loop,
            )
        backend = None
        persistence = settings.source_persistence
        if persistence is not None:
            backend = persistence.get(self.peer_ip)
        if backend is None:
            backend = settings.pick(self.peer_ip)
        if backend is None:
            log.info(
                "no healthy server for a connection",
                extra={"listener_id": settings.listener.id},
            )
            self.termination = "no_server"
            self._abort()
            return
        proxy_header = settings.proxy_header
        if proxy_header is not None:
            # Client IP preservation: the PROXY header goes first, before any client byte.
            self.pending.append(proxy_header.build(peer, transport.get_extra_info("sockname")))
        # Nothing is read until the backend connection is up; the kernel buffers meanwhile.
        transport.pause_reading()
        self._connect(backend)
        self.last_activity = self.loop.time()
        self.idle_handle = self.loop.call_later(settings.idle_timeout, self._idle_check)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.settings.stats.bytes_in += len(data)
        self.last_activity = self.loop.time()
        upstream = self.upstream
        if upstream is not None:
            upstream.transport.write(data)  # type: ignore[union-attr]
        else:
            self.pending.append(data)

    def eof_received(self) -> bool:
        self.client_eof = True
        self.termination = self.termination or "client_closed"
        upstream = self.upstream
        if upstream is not None and upstream.transport.can_write_eof():  # type: ignore[union-attr]
            upstream.transport.write_eof()  # type: ignore[union-attr]
        if self.upstream_eof:
            self._close()
            return False
        # Keep sending the backend's answer to a half-closed plain TCP client.
        return self.settings.tls is None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._teardown(graceful=True)
        if self.registered:
            self.registered = False
            self.runtime.connections.discard(self)
            self.settings.stats.active_connections -= 1
            access_log = self.runtime.access_log
            if access_log is not None:
                access_log.tcp(self, self.termination or "closed")

    # -- backend side ----------------------------------------------------------------------------

    def _connect(self, backend: Backend) -> None:
        self.backend = self.chosen = backend
        backend.active += 1
        self.connect_at = time.monotonic()
        backend.requests += 1
        self.connect_task = self.loop.create_task(self._open(backend))

    async def _open(self, backend: Backend) -> None:
        try:
            _, upstream = await self.loop.create_connection(
                lambda: TcpUpstream(self), backend.address, backend.port
            )
        except OSError as exc:
            self.connect_task = None
            self._connect_failed(backend, exc)
            return
        self.connect_task = None
        if self.settings.route.outlier is not None:
            self.settings.route.outlier.success(backend)
        if self.closed:
            upstream.close()
            return
        self.connected_at = time.monotonic()
        self.upstream = upstream
        if self.throttled or self.writing_paused:
            upstream.transport.pause_reading()  # type: ignore[union-attr]
        persistence = self.settings.source_persistence
        if persistence is not None:
            persistence.remember(self.peer_ip, backend)
        if self.pending:
            upstream.transport.writelines(self.pending)  # type: ignore[union-attr]
            self.pending = []
        if self.client_eof and upstream.transport.can_write_eof():  # type: ignore[union-attr]
            upstream.transport.write_eof()  # type: ignore[union-attr]
        self.transport.resume_reading()

    def _connect_failed(self, backend: Backend, exc: OSError) -> None:
        if exc.errno in EXHAUSTED:
            # The node, not the backend, is out of descriptors: the node's log says so once, and
            # another server would fail the same way.
            self.runtime.descriptors.run_out()  # type: ignore[union-attr]
            self._release_backend()
            if not self.closed:
                self._abort()
            return
        log.info(
            "cannot connect to backend %s (%s:%d): %s",
            backend.id,
            backend.address,
            backend.port,
            exc,
            extra={"listener_id": self.settings.listener.id, "backend_id": backend.id},
        )
        self._release_backend()
        backend.connect_failures += 1
        if self.settings.route.outlier is not None:  # passive health checks (dataplane.outlier)
            self.settings.route.outlier.connect_failed(backend)
        if self.closed:
            return
        if not self.retried:
            self.retried = True
            other = self.settings.pick(self.peer_ip, exclude=backend)
            if other is not None:
                self._connect(other)
                return
        self.termination = "backend_error"
        self._abort()

    def upstream_data(self, data: bytes) -> None:
        self.sent += len(data)
        self.settings.stats.bytes_out += len(data)
        self.last_activity = self.loop.time()
        if self.writer is not None:
            self.writer.write(data)
        else:
            self.transport.write(data)

    def upstream_eof_received(self) -> bool:
        self.upstream_eof = True
        self.termination = self.termination or "backend_closed"
        if self.client_eof or not self.transport.can_write_eof():
            # TLS cannot half-close: close once the pending bytes are out.
            self._close()
            return False
        self.transport.write_eof()
        return True

    def upstream_lost(self) -> None:
        self.upstream = None
        if not self.termination:
            self.termination = "backend_closed"
        self._close()

    # -- lifecycle -------------------------------------------------------------------------------

    def _idle_check(self) -> None:
        self.idle_handle = None
        if self.closed:
            return
        timeout = self.settings.idle_timeout
        remaining = self.last_activity + timeout - self.loop.time()
        if remaining > 0.001:
            self.idle_handle = self.loop.call_later(remaining, self._idle_check)
            return
        self.termination = "idle_timeout"
        self._close()

    def _release_backend(self) -> None:
        backend = self.backend
        if backend is not None:
            self.backend = None
            backend.active -= 1

    def _teardown(self, *, graceful: bool) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.idle_handle is not None:
            self.idle_handle.cancel()
            self.idle_handle = None
        if self.connect_task is not None:
            self.connect_task.cancel()
            self.connect_task = None
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            upstream.client = None
            if graceful:
                upstream.close()
            else:
                upstream.abort()
        self._release_backend()

    def _close(self) -> None:
        self.closed = True
        self._teardown(graceful=True)
        self.transport.close()

    def _abort(self) -> None:
        self.closed = True
        self._teardown(graceful=False)
        self.transport.abort()

    def shutdown(self) -> None:
        """Graceful drain: a byte stream has no request boundary, so it may run until the end."""

    def abort(self, termination: str = "listener_stopped") -> None:
        """Immediate: a stopped or removed listener cuts its connections (seed 003), and so
        does a server's drain deadline or maintenance (``termination`` says which)."""
        self.termination = termination
        self._abort()


class TcpUpstream(asyncio.Protocol):
    """The backend side of one proxied TCP connection."""

    __slots__ = ("client", "closed", "transport")

    def __init__(self, client: TcpProxy) -> None:
        self.client: TcpProxy | None = client
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.client is not None:
            self.client.upstream_data(data)

    def eof_received(self) -> bool:
        if self.client is not None:
            return self.client.upstream_eof_received()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        client = self.client
        if client is not None:
            self.client = None
            client.upstream_lost()

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client is not None and not self.client.closed:
            self.client.transport.resume_reading()

    def close(self) -> None:
        self.client = None
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        self.client = None
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.abort()
