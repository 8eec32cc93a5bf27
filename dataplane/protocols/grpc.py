"""gRPC server groups (seed 003: "HTTPS listeners forward to HTTP, HTTPS and gRPC backends; gRPC
requires HTTP/2 to be enabled").

gRPC needs HTTP/2 end to end: messages are framed in DATA, and the call's status travels in
trailers, which HTTP/1.1 backends could not carry. So a stream of an h2 client connection is
relayed to a backend as an HTTP/2 stream of its own: headers, every DATA frame, and the trailers
in both directions.

Each client connection keeps one cleartext HTTP/2 connection (prior knowledge, as gRPC servers
listen) per backend it has used, and every call picks its backend with the listener's scheduler:
calls on one long-lived client connection spread over the group, which is the reason to balance
gRPC at layer 7 rather than per TCP connection.

Flow control is end to end: a DATA frame is acknowledged to its sender only once the other side
has taken it (dataplane.nghttp2.Outbound), so a slow reader slows its writer down instead
of filling the dataplane's memory.

When the dataplane itself must fail a call, it answers as a gRPC server would, with a
trailers-only response: UNAVAILABLE (14) when no server is eligible or reachable, and
DEADLINE_EXCEEDED (4) when no response headers arrive within the response timeout.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from dataplane.nghttp2 import INTERNAL_ERROR
from dataplane.protocols import HOP_BY_HOP
from dataplane.protocols.h2 import CONNECTION_WINDOW, STREAM_WINDOW, Http2Connection
from dataplane.protocols.streams import Stream

if TYPE_CHECKING:
    from dataplane.balancing import Backend
    from dataplane.protocols import ListenerSettings

log = logging.getLogger(__name__)

# gRPC status codes (grpc/doc/statuscodes.md).
DEADLINE_EXCEEDED = 4
RESOURCE_EXHAUSTED = 8
UNAVAILABLE = 14
# Time allowed to open a connection to a backend before the call tries another one.
CONNECT_TIMEOUT = 5.0


def forwarded_headers(
    headers: list[tuple[bytes, bytes]], settings: ListenerSettings, peer_ip: bytes
) -> list[tuple[bytes, bytes]]:
    """The request headers a backend gets: the client's, with the listener's X-Forwarded-*."""
    fields: list[tuple[bytes, bytes]] = []
    xff: list[bytes] = []
    drop = settings.drop_headers
    for name, value in headers:
        if name == b":scheme":
            # The hop to the backend is cleartext.
            fields.append((name, b"http"))
        elif name == b"x-forwarded-for":
            xff.append(value)
        elif name not in drop:
            fields.append((name, value))
    mode = settings.xff_mode
    if mode == "add":
        fields.append((b"x-forwarded-for", b", ".join([*xff, peer_ip])))
    elif mode == "off":
        fields += [(b"x-forwarded-for", value) for value in xff]
    fields += settings.static_fields
    return fields


class RequestOutbound:
    """Bytes a call has for its backend stream, waiting for flow-control window, and how it ends.

    Each chunk carries a credit: the size of the frames it came from on the other side, handed
    to `on_sent` once the chunk is written, so that side's window reopens only then.
    """

    __slots__ = ("chunks", "end", "ended", "on_sent", "size", "trailers")

    def __init__(self, on_sent: Callable[[int], None] | None = None) -> None:
        self.chunks: collections.deque[list[Any]] = collections.deque()
        self.size = 0
        self.end = False
        self.ended = False
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.on_sent = on_sent

    def add(self, data: bytes, credit: int = 0) -> None:
        self.chunks.append([data, credit])
        self.size += len(data)

    def pump(self, conn: h2.connection.H2Connection, stream_id: int) -> None:
        """Send what the windows allow; ends the stream once everything is out."""
        chunks = self.chunks
        while chunks:
            window = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
            if window <= 0:
                return
            chunk = chunks[0]
            data = chunk[0]
            if len(data) <= window:
                conn.send_data(stream_id, data)
                chunks.popleft()
                self.size -= len(data)
                if chunk[1] and self.on_sent is not None:
                    self.on_sent(chunk[1])
            else:
                conn.send_data(stream_id, data[:window])
                chunk[0] = data[window:]
                self.size -= window
        if self.end and not self.ended:
            self.ended = True
            if self.trailers:
                conn.send_headers(stream_id, self.trailers, end_stream=True)
            else:
                conn.end_stream(stream_id)


class GrpcUpstream(asyncio.Protocol):
    """One HTTP/2 connection to a gRPC backend, used by the calls of one client connection."""

    def __init__(self, owner: Http2Connection, key: tuple[str, int]) -> None:
        self.owner = owner
        self.key = key
        self.loop = owner.loop
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.transport: asyncio.Transport | None = None
        # Done once connected; calls that find the connection still opening wait on it.
        self.connected: asyncio.Future[None] = self.loop.create_future()
        self.streams: dict[int, GrpcStream] = {}
        self.usable = True
        self.flush_scheduled = False

    async def open(self) -> None:
        """Connect; raises OSError or TimeoutError, which the calls waiting on it get too."""
        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: self, *self.key), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            self._gone(exc)
            raise

    def _gone(self, exc: Exception) -> None:
        self.usable = False
        if self.owner.upstreams.get(self.key) is self:
            del self.owner.upstreams[self.key]
        if not self.connected.done():
            self.connected.set_exception(exc)
            # Retrieved here: no other call may be waiting for it.
            self.connected.exception()

    # -- transport callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        conn = self.conn
        conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        conn.initiate_connection()
        conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()
        self.connected.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.info("gRPC backend %s:%d broke HTTP/2: %s", *self.key, exc)
            self.flush()
            self.close()
            return
        for event in events:
            self._event(event)
        self.flush()
        self.owner.flush()

    def _event(self, event: h2.events.Event) -> None:
        stream_id = getattr(event, "stream_id", 0)
        stream = self.streams.get(stream_id) if stream_id else None
        if isinstance(event, h2.events.DataReceived):
            if stream is None:
                self.acknowledge(stream_id, event.flow_controlled_length)
            else:
                stream.response_data(event.data, event.flow_controlled_length)
        elif isinstance(event, h2.events.ResponseReceived):
            if stream is not None:
                # A trailers-only response (an immediate error) ends in its one HEADERS frame.
                stream.response_headers(event.headers, ended=event.stream_ended is not None)
        elif isinstance(event, h2.events.TrailersReceived):
            if stream is not None:
                stream.response_trailers(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            if stream is not None:
                self.streams.pop(stream_id, None)
                stream.response_end()
        elif isinstance(event, h2.events.StreamReset):
            if stream is not None:
                self.streams.pop(stream_id, None)
                stream.upstream_failed(f"the backend reset the stream ({event.error_code!r})")
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            for waiting in list(self.streams.values()):
                waiting.pump_request()
        elif isinstance(event, h2.events.ConnectionTerminated):
            # GOAWAY: calls the backend did not take fail; the ones it took finish.
            self._gone(ConnectionError("the backend is going away"))
            last = event.last_stream_id or 0
            for pending_id in [sid for sid in self.streams if sid > last]:
                self.streams.pop(pending_id).upstream_failed("the backend is going away")
            if not self.streams:
                self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone(exc or ConnectionError("the backend closed the connection"))
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.upstream_failed("the backend closed the connection")
        self.owner.flush()

    # -- streams ---------------------------------------------------------------------------------

    def open_stream(
        self, stream: GrpcStream, headers: list[tuple[bytes, bytes]], *, end: bool
    ) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, headers, end_stream=end)
        self.streams[stream_id] = stream
        self.schedule_flush()
        return stream_id

    def acknowledge(self, stream_id: int, credit: int) -> None:
        if credit and self.usable:
            try:
                self.conn.acknowledge_received_data(credit, stream_id)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                return
            self.schedule_flush()

    def reset(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)
        try:
            self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self.schedule_flush()

    def schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.transport is None or self.transport.is_closing():
            return
        data = self.conn.data_to_send()
        if data:
            self.transport.write(data)

    def close(self) -> None:
        self.usable = False
        if self.transport is not None:
            self.transport.close()


class GrpcStream(Stream):
    """One gRPC call: a client stream relayed to a stream on a backend connection."""

    __slots__ = (
        "backend",
        "client_ip",
        "headers",
        "request_out",
        "responded",
        "retried",
        "settings",
        "timer",
        "upstream",
        "upstream_id",
    )

    def __init__(
        self,
        connection: Http2Connection,
        stream_id: int,
        headers: list[tuple[bytes, bytes]],
        settings: ListenerSettings,
    ) -> None:
        super().__init__(connection, stream_id)
        self.settings = settings
        self.client_ip = connection.peer_ip
        self.headers = forwarded_headers(headers, settings, connection.peer_ip.encode())
        # The request body, acknowledged to the client once the backend's window took it.
        self.request_out = RequestOutbound(on_sent=self._request_sent)
        self.backend: Backend | None = None
        self.upstream: GrpcUpstream | None = None
        self.upstream_id = 0
        self.responded = False
        self.retried = False
        self.timer: asyncio.TimerHandle | None = None

    @classmethod
    def open(
        cls,
        connection: Http2Connection,
        stream_id: int,
        headers: list[tuple[bytes, bytes]],
        *,
        ended: bool,
    ) -> GrpcStream:
        settings = connection.settings
        stream = cls(connection, stream_id, headers, settings)
        stream.request_ended = ended
        stream.request_out.end = ended
        connection.streams[stream_id] = stream
        settings.stats.requests += 1
        throttle = settings.throttle
        if throttle is not None and throttle.admit(stream.client_ip, time.monotonic()):
            # QPS per client IP (dataplane.throttle): a call's rate-limit status, as gRPC
            # clients read it, rather than HTTP's 429.
            settings.stats.throttled_requests += 1
            stream._fail(RESOURCE_EXHAUSTED, "over the listener's QPS per client IP")
            return stream
        stream.timer = connection.loop.call_later(settings.response_timeout, stream._late)
        stream._choose(None)
        return stream

    # -- choosing and reaching a backend ---------------------------------------------------------

    def _choose(self, exclude: Backend | None) -> None:
        backend = self.settings.route.pick(self.client_ip, exclude)
        if backend is None:
            self._fail(UNAVAILABLE, "no healthy backend server")
            return
        self.backend = backend
        backend.active += 1
        key = (backend.address, backend.port)
        upstream = self.connection.upstreams.get(key)
        if upstream is not None and upstream.usable and upstream.transport is not None:
            self._attach(upstream)
        else:
            self.connection.loop.create_task(self._connect(backend, key))

    async def _connect(self, backend: Backend, key: tuple[str, int]) -> None:
        connection = self.connection
        upstream = connection.upstreams.get(key)
        try:
            if upstream is None or not upstream.usable:
                upstream = connection.upstreams[key] = GrpcUpstream(connection, key)
                await upstream.open()
            else:
                # Another call is opening this connection: wait for it.
                await asyncio.shield(upstream.connected)
        except (OSError, TimeoutError) as exc:
            self._connect_failed(backend, exc)
            return
        if connection.streams.get(self.stream_id) is not self or self.backend is not backend:
            return
        self._attach(upstream)

    def _connect_failed(self, backend: Backend, exc: Exception) -> None:
        log.info(
            "cannot connect to gRPC backend %s (%s:%d): %s",
            backend.id,
            backend.address,
            backend.port,
            exc or type(exc).__name__,
            extra={"listener_id": self.settings.listener.id, "backend_id": backend.id},
        )
        self._release()
        if self.connection.streams.get(self.stream_id) is not self:
            return
        if not self.retried:
            self.retried = True
            self._choose(backend)
            return
        self._fail(UNAVAILABLE, "no backend server reachable")

    def _attach(self, upstream: GrpcUpstream) -> None:
        self.upstream = upstream
        out = self.request_out
        end = out.end and not out.chunks and not out.trailers
        self.upstream_id = upstream.open_stream(self, self.headers, end=end)
        if end:
            out.ended = True
        self.out.on_sent = self._response_sent
        self.pump_request()

    # -- client to backend -----------------------------------------------------------------------

    def request_data(self, data: bytes, credit: int) -> None:
        self.request_out.add(data, credit)
        self.pump_request()

    def request_end(self) -> None:
        self.request_ended = True
        self.request_out.end = True
        self.pump_request()

    def request_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.request_out.trailers = headers

    def pump_request(self) -> None:
        upstream = self.upstream
        if upstream is None or not upstream.usable or self.request_out.ended:
            return
        try:
            self.request_out.pump(upstream.conn, self.upstream_id)
        except h2.exceptions.StreamClosedError:
            return
        upstream.schedule_flush()

    def _request_sent(self, credit: int) -> None:
        self.connection.acknowledge(self.stream_id, credit)

    # -- backend to client -----------------------------------------------------------------------

    def response_headers(self, headers: list[tuple[bytes, bytes]], *, ended: bool) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.responded = True
        status = next((value for name, value in headers if name == b":status"), b"0")
        if status[:1].isdigit():
            self.settings.stats.responses[int(status[:1])] += 1
        # Should a backend send fields HTTP/2 forbids, they stop here.
        fields = [header for header in headers if header[0] not in HOP_BY_HOP]
        self.connection.send_headers(self, fields, end_stream=ended)

    def response_data(self, data: bytes, credit: int) -> None:
        self.settings.stats.bytes_out += len(data)
        self.connection.send_data(self, data, credit)

    def response_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.connection.finish(self, trailers=headers)

    def response_end(self) -> None:
        self._release()
        if not self.out.end:
            if self.responded:
                self.connection.finish(self)
            else:
                self._fail(UNAVAILABLE, "the backend ended the call without a response")

    def _response_sent(self, credit: int) -> None:
        upstream = self.upstream
        if upstream is not None:
            upstream.acknowledge(self.upstream_id, credit)

    # -- failures --------------------------------------------------------------------------------

    def upstream_failed(self, reason: str) -> None:
        self._release()
        if self.connection.streams.get(self.stream_id) is not self:
            return
        if self.responded:
            # Part of the response is out: the client must see the call break, not end.
            self.connection.reset(self, INTERNAL_ERROR)
        else:
            self._fail(UNAVAILABLE, reason)

    def _late(self) -> None:
        self.timer = None
        if self.responded or self.connection.streams.get(self.stream_id) is not self:
            return
        if self.upstream is not None:
            self.upstream.reset(self.upstream_id)
        self._release()
        self._fail(DEADLINE_EXCEEDED, "the backend did not answer within the response timeout")

    def _fail(self, code: int, message: str) -> None:
        """A trailers-only response, as a gRPC server sends for a call that fails at once."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.settings.stats.responses[2] += 1
        self.connection.send_headers(
            self,
            [
                (b":status", b"200"),
                (b"content-type", b"application/grpc"),
                (b"grpc-status", b"%d" % code),
                (b"grpc-message", message.encode()),
            ],
            end_stream=True,
        )

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.upstream is not None:
            self.upstream.reset(self.upstream_id)
        self._release()

    def _release(self) -> None:
        backend = self.backend
        if backend is not None:
            self.backend = None
            backend.active -= 1
