"""HTTP/2 on HTTPS listeners (seeds 000, 001 and 003: "Enable HTTP/2").

A TLS handshake that agreed on ALPN "h2" hands the connection from HttpProxy to Http2Connection.
Framing, HPACK, stream states and flow control are nghttp2's (dataplane.nghttp2); the connection
only decides what each stream means. What happens to each request stream depends on the listener's
server group:

- HTTP and HTTPS groups (seed 001's FAQ: "Layer 7 listeners use HTTP/1.1 to distribute network
  traffic to backend servers"): the stream becomes one HTTP/1.1 exchange on a connection of its
  own that exists only in memory. A `StreamProxy` (the HTTP/1.1 proxy itself) reads the request
  from it and writes the response to it, and the stream turns those bytes back into HEADERS and
  DATA frames. So forwarding rules, persistence, compression, bandwidth, X-Forwarded-* headers,
  pooled backend connections and the dataplane's own 502/503/504 answers work for h2 clients
  exactly as for HTTP/1.1 ones, from one implementation. The price is one extra parse of each
  response head and of its framing, in httptools.
- gRPC groups (seed 003): streams are relayed to the backend over HTTP/2 as they are, trailers
  included (dataplane.protocols.grpc).

Flow control works in both directions. The stream windows advertised to clients are large, and a
client's DATA is acknowledged only once the backend side has taken it, so a slow backend stops a
fast uploader. Response bytes beyond a client's window wait in the stream's `Outbound`; when that
passes SEND_HIGH_WATER the backend connection stops being read until it drains.

Graceful shutdown refuses new streams (REFUSED_STREAM, which clients retry elsewhere) and sends
GOAWAY once the streams in flight are done. A client's GOAWAY lets its streams in flight finish;
the connection closes when nghttp2 has nothing left to read or write.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import httptools

from dataplane.nghttp2 import (
    CANCEL,
    INTERNAL_ERROR,
    NO_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    Http2Error,
    Outbound,
    Session,
)
from dataplane.protocols import HOP_BY_HOP, fits_request_line
from dataplane.protocols.http import MAX_HEADER_BYTES, HttpProxy, Request, _Reject

if TYPE_CHECKING:
    from dataplane.node import ListenerRuntime
    from dataplane.protocols import ListenerSettings
    from dataplane.upstream import HttpUpstream

log = logging.getLogger(__name__)

# Receive windows offered to clients: large enough that one stream can fill a fast link, small
# enough that 128 stalled streams cannot make the dataplane buffer much.
STREAM_WINDOW = 1 << 20
CONNECTION_WINDOW = 16 << 20
MAX_CONCURRENT_STREAMS = 128
# Response bytes a stream may hold for a client before its backend is paused, and resumed.
SEND_HIGH_WATER = 256 * 1024
SEND_LOW_WATER = 64 * 1024


class Stream:
    """What Http2Connection needs of a stream, whichever way it is forwarded."""

    __slots__ = ("connection", "out", "request_ended", "stream_id")

    def __init__(self, connection: Http2Connection, stream_id: int) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.out = Outbound()
        self.request_ended = False

    def request_data(self, data: bytes, credit: int) -> None:
        raise NotImplementedError

    def request_end(self) -> None:
        self.request_ended = True

    def request_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        """HTTP/1.1 backends get no request trailers (httptools could not frame them)."""

    def cancel(self) -> None:
        """The client reset the stream, or the connection is gone."""

    def pause_backend(self) -> None:
        """The client is not taking response bytes as fast as they come."""

    def resume_backend(self) -> None:
        """The client caught up."""


# -- HTTP and HTTPS groups: each stream is an HTTP/1.1 exchange ---------------------------------


class StreamProxy(HttpProxy):
    """The HTTP/1.1 proxy serving one HTTP/2 stream.

    The HTTP/2 connection was accepted (access control, counters) once; a stream only takes its
    peer address and its per-connection header lines, computed once per listener generation.
    The request head arrives as nghttp2's field list and goes through the same field checks and
    forwarding code as an HTTP/1.1 client's, without being written out and parsed again.
    """

    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        connection: Http2Connection = transport.connection  # type: ignore[attr-defined]
        self.peer_ip, self.peer_port = connection.peer_ip, connection.peer_port
        self.peer_ip_bytes = connection.peer_ip_bytes
        self.xff_line = connection.xff_line
        self.conn_headers = self._connection_headers(self.settings)
        self._use_bucket(self.settings)

    def begin(
        self,
        method: bytes,
        path: bytes,
        host: bytes,
        fields: list[tuple[bytes, bytes]],
        *,
        chunked: bool,
    ) -> None:
        """One request head from the stream: checked and started as HttpProxy does its own."""
        self.on_message_begin()
        request: Request = self.parsing  # type: ignore[assignment]
        request.url = path
        request.method = method
        try:
            # nghttp2 has refused connection-specific fields, uppercase names and a
            # Content-Length that the DATA frames contradict (RFC 9113 8.2.2, 8.1.1).
            self.on_header(b"host", host)
            on_header = self.on_header
            for name, value in fields:
                on_header(name, value)
            self.in_head = False
            if method == b"CONNECT":
                self.reject_status = 405
                raise _Reject
            if chunked:
                # A body of unknown length reaches an HTTP/1.1 backend chunked.
                request.chunked = request.has_body = True
            # Connection: close, as the stream ends with its one response.
            self._admit(request, keep_alive=False)
        except _Reject:
            self._reject(self.reject_status or 400)

    def _connection_headers(self, settings: ListenerSettings) -> bytes:
        connection: Http2Connection = self.transport.connection  # type: ignore[attr-defined]
        cached = connection.header_lines
        if cached is None or cached[0] is not settings:
            cached = connection.header_lines = (settings, super()._connection_headers(settings))
        return cached[1]

    def upstream_interim(self, upstream: HttpUpstream, head: bytes) -> None:
        """Not passed on: the stream's response parser takes only final responses."""


# Marks the end of a request body among a stream's pending pieces.
_END = b""


class ProxiedStream(Stream):
    """One stream served by a StreamProxy; it is also the proxy's transport.

    The request head and body go to the proxy as calls (the body re-chunked by the proxy when
    its length is unknown); the proxy's response bytes are parsed back into HEADERS and DATA
    frames.
    """

    __slots__ = (
        "backend_paused",
        "body",
        "closing",
        "complete",
        "head_request",
        "headers",
        "parser",
        "pending",
        "proxy",
        "reading",
        "responded",
    )

    def __init__(self, connection: Http2Connection, stream_id: int, *, head_request: bool) -> None:
        super().__init__(connection, stream_id)
        self.head_request = head_request
        self.reading = True
        self.closing = False
        self.responded = False
        self.backend_paused = False
        # Request body pieces the proxy is not reading yet, with the frame credit each carries;
        # _END marks the end of the body.
        self.pending: list[tuple[bytes, int]] = []
        self.headers: list[tuple[bytes, bytes]] = []
        # Body pieces parsed from one write, sent as one DATA frame (a backend that sends many
        # small chunks must not become as many frames).
        self.body: list[bytes] = []
        self.complete = False
        self.parser = httptools.HttpResponseParser(self)
        self.proxy = StreamProxy(connection.runtime)

    def start(
        self,
        method: bytes,
        path: bytes,
        host: bytes,
        fields: list[tuple[bytes, bytes]],
        *,
        chunked: bool,
    ) -> None:
        proxy = self.proxy
        proxy.connection_made(self)  # type: ignore[arg-type]
        if not self.closing:
            proxy.begin(method, path, host, fields, chunked=chunked)
            if self.request_ended and not proxy.closed:
                proxy.on_message_complete()

    # -- request ---------------------------------------------------------------------------------

    def request_data(self, data: bytes, credit: int) -> None:
        if data:
            self._feed(data, credit)

    def request_end(self) -> None:
        self.request_ended = True
        self._feed(_END, 0)

    def _feed(self, data: bytes, credit: int) -> None:
        if self.closing:
            self.connection.acknowledge(self.stream_id, credit)
        elif self.reading and not self.pending:
            self._deliver(data)
            self.connection.acknowledge(self.stream_id, credit)
        else:
            self.pending.append((data, credit))

    def _deliver(self, data: bytes) -> None:
        proxy = self.proxy
        if proxy.closed:
            return
        if data is _END:
            proxy.on_message_complete()
        else:
            proxy.reads += 1
            proxy.on_body(data)

    def cancel(self) -> None:
        if not self.closing:
            self.proxy.abort()

    # -- the transport the proxy writes to -------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.connection.transport.get_extra_info(name, default)

    def write(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            # Only the proxy writes here; a response it cannot frame is a bug, not traffic.
            log.exception("unreadable response on HTTP/2 stream %d", self.stream_id)
            self.connection.reset(self, INTERNAL_ERROR)
            return
        body = self.body
        if body:
            data = body[0] if len(body) == 1 else b"".join(body)
            body.clear()
            if not self.out.end:
                self.connection.send_data(self, data)
        if self.complete and self.responded and not self.out.end:
            self.connection.finish(self)

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True
        while self.pending and self.reading and not self.closing:
            data, credit = self.pending.pop(0)
            self._deliver(data)
            self.connection.acknowledge(self.stream_id, credit)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self._end(INTERNAL_ERROR)

    def abort(self) -> None:
        self._end(CANCEL)

    def _end(self, code: int) -> None:
        if self.closing:
            return
        self.closing = True
        for _, credit in self.pending:
            self.connection.acknowledge(self.stream_id, credit)
        self.pending.clear()
        if not self.out.end:
            # The proxy gave up before a complete response: the client must not take what it
            # got for all of it.
            self.connection.reset(self, code)
        self.connection.loop.call_soon(self.proxy.connection_lost, None)

    # -- response parser callbacks ---------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value.strip(b" \t")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        headers = self.headers
        self.headers = []
        if status < 200:
            return
        fields = [(b":status", b"%d" % status)]
        fields += [header for header in headers if header[0] not in HOP_BY_HOP]
        self.responded = True
        end = self.head_request or status in (204, 304)
        self.connection.send_headers(self, fields, end_stream=end)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True

    # -- flow control from the client side -------------------------------------------------------

    def pause_backend(self) -> None:
        if not self.backend_paused:
            self.backend_paused = True
            self.proxy.pause_writing()

    def resume_backend(self) -> None:
        if self.backend_paused:
            self.backend_paused = False
            self.proxy.resume_writing()


# -- the connection ------------------------------------------------------------------------------


class Http2Connection(asyncio.Protocol):
    """The client side of one HTTP/2 connection: frames in, streams out."""

    def __init__(self, runtime: ListenerRuntime) -> None:
        self.runtime = runtime
        self.loop: asyncio.AbstractEventLoop = runtime.loop
        self.stats = runtime.stats
        self.settings: ListenerSettings = runtime.settings  # type: ignore[assignment]
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.session: Session | None = None
        self.streams: dict[int, Stream] = {}
        # Streams whose backend is paused until nghttp2 has sent enough of their response.
        self.held: set[Stream] = set()
        self.peer_ip = ""
        self.peer_port = 0
        self.peer_ip_bytes = b""
        self.xff_line = b""
        # StreamProxy's header lines for one listener generation: (settings, lines).
        self.header_lines: tuple[ListenerSettings, bytes] | None = None
        self.registered = False
        self.closed = False
        self.draining = False
        self.writing_paused = False
        self.flush_scheduled = False
        self.idle_timer: asyncio.TimerHandle | None = None
        # gRPC: this connection's HTTP/2 connections to backends, by (address, port).
        self.upstreams: dict[tuple[str, int], Any] = {}

    # -- transport callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        settings = self.runtime.settings
        if settings is None:
            self.closed = True
            transport.abort()
            return
        self.settings = settings
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_ip, self.peer_port = peer[0], peer[1]
        acl = settings.acl
        if acl is not None and not acl.allows(self.peer_ip):
            self.stats.denied_connections += 1
            self.closed = True
            transport.abort()
            return
        self.peer_ip_bytes = self.peer_ip.encode()
        self.xff_line = b"X-Forwarded-For: %s\r\n" % self.peer_ip_bytes
        self.registered = True
        self.runtime.connections.add(self)  # type: ignore[arg-type]
        self.stats.active_connections += 1
        self.stats.total_connections += 1
        self.session = Session(
            self,
            max_concurrent_streams=MAX_CONCURRENT_STREAMS,
            stream_window=STREAM_WINDOW,
            connection_window=CONNECTION_WINDOW,
            max_header_list=MAX_HEADER_BYTES,
        )
        self.flush()
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.stats.bytes_in += len(data)
        session: Session = self.session  # type: ignore[assignment]
        try:
            session.receive(data)
        except Http2Error as exc:
            # nghttp2 has queued a GOAWAY naming the error; send it and go.
            log.info(
                "HTTP/2 protocol error from %s: %s",
                self.peer_ip,
                exc,
                extra={"listener_id": self.settings.listener.id},
            )
            self.flush()
            self._close()
            return
        self.flush()
        if not session.alive:
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        self._cut_streams()
        # The session refers back to this connection; free nghttp2's memory now, not at GC.
        self.session = None
        if self.registered:
            self.registered = False
            self.runtime.connections.discard(self)  # type: ignore[arg-type]
            self.stats.active_connections -= 1

    def pause_writing(self) -> None:
        self.writing_paused = True
        for stream in self.streams.values():
            stream.pause_backend()

    def resume_writing(self) -> None:
        self.writing_paused = False
        for stream in list(self.streams.values()):
            if stream.out.size < SEND_LOW_WATER:
                stream.resume_backend()

    # -- session events (called by nghttp2 through the Session) ----------------------------------

    def on_request(self, stream_id: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        settings = self.runtime.settings
        if self.draining or settings is None:
            self._refuse(stream_id, REFUSED_STREAM)
            return
        self.settings = settings
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if settings.grpc:
            from dataplane.protocols.grpc import GrpcStream

            stream: Stream | None = GrpcStream.open(self, stream_id, headers, ended=ended)
        else:
            stream = self._proxied(stream_id, headers, ended=ended)
        if stream is None:
            self._stream_gone()

    def on_data(self, stream_id: int, data: bytes, credit: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            self.acknowledge(stream_id, credit)
        else:
            stream.request_data(data, credit)

    def on_end(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.request_end()

    def on_trailers(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.request_trailers(headers)

    def on_close(self, stream_id: int, code: int) -> None:
        """nghttp2 closed the stream: both sides ended, or a reset either way."""
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            if not stream.out.ended:
                stream.cancel()
            self._stream_gone()

    # -- streams ---------------------------------------------------------------------------------

    def _proxied(
        self, stream_id: int, headers: list[tuple[bytes, bytes]], *, ended: bool
    ) -> Stream | None:
        """Start one HTTP/1.1 exchange for a stream; None when the request is malformed."""
        method = path = authority = b""
        host = None
        fields: list[tuple[bytes, bytes]] = []
        has_length = False
        for field in headers:
            name = field[0]
            if name[0] == 58:  # b":"
                if name == b":method":
                    method = field[1]
                elif name == b":path":
                    path = field[1]
                elif name == b":authority":
                    authority = field[1]
            elif name == b"host":
                if host is not None or (authority and field[1] != authority):
                    # RFC 9113 8.3.1: a second Host, or one naming another host than
                    # :authority, leaves the rules and the backend to believe different hosts.
                    path = b""
                    break
                host = field[1]
            else:
                if name == b"content-length":
                    has_length = True
                fields.append(field)
        if method == b"CONNECT":
            path = authority
        elif path[:1] != b"/" and (path != b"*" or method != b"OPTIONS"):
            # RFC 9113 8.3.1: origin form (or "*"); an absolute-form :path would be read as a
            # second authority by the HTTP/1.1 proxy.
            path = b""
        if not path or not fits_request_line(method, path, authority):
            self._refuse(stream_id, PROTOCOL_ERROR)
            return None
        stream = ProxiedStream(self, stream_id, head_request=method == b"HEAD")
        stream.request_ended = ended
        self.streams[stream_id] = stream
        if self.writing_paused:
            stream.backend_paused = True
        # RFC 9113 8.3.1: :authority is the host. The proxy checks it as any client's; with no
        # authority at all, the request says so with an empty Host, as HTTP/1.1 does.
        stream.start(
            method, path, authority or host or b"", fields, chunked=not ended and not has_length
        )
        if self.writing_paused and not stream.closing:
            stream.proxy.pause_writing()
        return stream

    def _refuse(self, stream_id: int, code: int) -> None:
        if self.session is not None and not self.closed:
            self.session.reset(stream_id, code)
            self.schedule_flush()

    def send_headers(
        self, stream: Stream, headers: list[tuple[bytes, bytes]], *, end_stream: bool = False
    ) -> None:
        if self.streams.get(stream.stream_id) is not stream or self.closed:
            return
        out = stream.out
        if not self.session.respond(stream.stream_id, headers, None if end_stream else out):  # type: ignore[union-attr]
            # The client reset it, or the connection is closing.
            self._drop(stream)
            return
        if end_stream:
            out.end = out.ended = True
            self._done(stream)
        self.schedule_flush()

    def send_data(self, stream: Stream, data: bytes, credit: int = 0) -> None:
        stream.out.add(data, credit)
        self.pump(stream)

    def finish(self, stream: Stream, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        """The response is complete once what is queued has been sent."""
        stream.out.end = True
        stream.out.trailers = trailers
        self.pump(stream)

    def pump(self, stream: Stream) -> None:
        """The stream's Outbound has more for nghttp2, which sends it as the windows allow."""
        if self.closed or self.streams.get(stream.stream_id) is not stream:
            return
        self.session.resume(stream.stream_id)  # type: ignore[union-attr]
        self.schedule_flush()
        if stream.out.size > SEND_HIGH_WATER:
            stream.pause_backend()
            self.held.add(stream)

    def reset(self, stream: Stream, code: int) -> None:
        if self.streams.get(stream.stream_id) is not stream:
            return
        del self.streams[stream.stream_id]
        self._refuse(stream.stream_id, code)
        self._stream_gone()

    def acknowledge(self, stream_id: int, credit: int) -> None:
        """The backend side took `credit` bytes of the client's frames: reopen its windows."""
        if credit and not self.closed:
            self.session.acknowledge(stream_id, credit)  # type: ignore[union-attr]
            self.schedule_flush()

    def _done(self, stream: Stream) -> None:
        """The response has ended; a request body still coming is not needed any more."""
        if self.streams.get(stream.stream_id) is not stream:
            return
        del self.streams[stream.stream_id]
        if not stream.request_ended:
            # RFC 9113 8.1: a complete response may end the request early with NO_ERROR.
            self._refuse(stream.stream_id, NO_ERROR)
        self._stream_gone()

    def _drop(self, stream: Stream) -> None:
        if self.streams.pop(stream.stream_id, None) is stream:
            stream.cancel()
            self._stream_gone()

    def _stream_gone(self) -> None:
        if self.streams:
            return
        if self.draining:
            self._goaway()
        else:
            self._arm_idle()

    # -- writing ---------------------------------------------------------------------------------

    def schedule_flush(self) -> None:
        """Frames go out once per loop iteration, so a burst of small ones is one write."""
        if not self.flush_scheduled and not self.closed:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.closed:
            return
        session: Session = self.session  # type: ignore[assignment]
        try:
            data = session.data_to_send()
        except Http2Error:
            log.exception("HTTP/2 session failed while sending to %s", self.peer_ip)
            self._close()
            return
        if data:
            self.transport.write(data)
        if not session.alive:
            # Both GOAWAYs are out (or one, and no stream is left to finish): nothing more can
            # happen on this connection.
            self._close()
            return
        finished = session.finished
        if finished:
            # Responses whose last frame went out with this write.
            session.finished = []
            streams = self.streams
            for stream_id in finished:
                stream = streams.get(stream_id)
                if stream is not None:
                    self._done(stream)
            self.flush()
            return
        if self.held and not self.writing_paused:
            for stream in list(self.held):
                if stream.out.size < SEND_LOW_WATER:
                    self.held.discard(stream)
                    stream.resume_backend()

    # -- lifecycle -------------------------------------------------------------------------------

    def _arm_idle(self) -> None:
        if self.idle_timer is None and not self.closed:
            self.idle_timer = self.loop.call_later(self.settings.idle_timeout, self._idle)

    def _idle(self) -> None:
        self.idle_timer = None
        if not self.streams:
            self._goaway()

    def _goaway(self) -> None:
        if self.closed:
            return
        if self.session is not None:
            self.session.terminate(NO_ERROR)
        self.flush()
        self._close()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()
            # Nothing more is sent once the connection is closing (its GOAWAY or the client's),
            # so the streams in flight end now rather than answer into a closed session.
            self._cut_streams()

    def _cut_streams(self) -> None:
        streams = list(self.streams.values())
        self.streams.clear()
        self.held.clear()
        for stream in streams:
            stream.cancel()
        for upstream in list(self.upstreams.values()):
            upstream.close()
        self.upstreams.clear()

    def shutdown(self) -> None:
        """Graceful: finish the streams in flight, refuse new ones, then GOAWAY."""
        self.draining = True
        if not self.streams:
            self._goaway()

    def abort(self) -> None:
        """Immediate: a stopped or removed listener cuts its connections (seed 003)."""
        self.closed = True
        self.transport.abort()
