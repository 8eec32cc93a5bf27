"""HTTP/2 and HTTP/3 request streams, each served by an exchange of its own.

Seed 001's FAQ: "Layer 7 listeners use HTTP/1.1 to distribute network traffic to backend
servers". Each request stream of an HTTP/2 (dataplane.protocols.h2) or HTTP/3
(dataplane.protocols.quic) connection with an HTTP or HTTPS server group gets a `StreamProxy`,
the exchange (dataplane.protocols.exchange) an HTTP/1.1 client's request goes through: the
request head arrives as the codec's field list and goes through the same field checks,
forwarding rules, persistence, managed headers, compression, bandwidth, pooled backend
connections, timeouts, counters and access log, and the dataplane's own 502/503/504 answers are
the same. The `ProxiedStream` is the exchange's client: a response head, the backend's or one of
the node's own answers, reaches it as a call (`respond`) and the body as `send_body`, which
become the codec's HEADERS and DATA. Nothing is written as HTTP/1.1 to be parsed back, and no
stream poses as a transport.

A codec's connection is a `StreamConnection`.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

from dataplane.accesslog import CountsBytes
from dataplane.heads import fits_request_line
from dataplane.nghttp2 import CANCEL, INTERNAL_ERROR, PROTOCOL_ERROR, Outbound
from dataplane.protocols import HOP_BY_HOP
from dataplane.protocols.exchange import Exchange, Request, _clock, _Reject

if TYPE_CHECKING:
    from dataplane.protocols import ListenerSettings


class StreamConnection:
    """What streams need of the HTTP/2 or HTTP/3 connection they belong to: the base class of
    both codecs' connections (dataplane.protocols.h2.Http2Connection, dataplane.protocols.quic.
    Http3Connection), so that in the compiled build a stream reads these fields and makes these
    calls in C. Each connection also has `version`, its protocol as an access log writes it, and
    `send_headers` (gRPC's responses). Error codes are HTTP/2's (RFC 9113 section 7); an HTTP/3
    connection maps them to its own."""

    __slots__ = (
        "ended_streams",
        "header_lines",
        "loop",
        "peer_ip",
        "peer_ip_bytes",
        "peer_port",
        "runtime",
        "ssl_object",
        "streams",
        "writing_paused",
        "xff_line",
    )

    # Set by each connection's __init__:
    # runtime: ListenerHandle; loop: asyncio.AbstractEventLoop;
    # ssl_object: ssl.SSLObject | None, the client's TLS session (None for QUIC: aioquic shows
    #     none);
    # streams: dict[int, Stream]; peer_ip: str; peer_port: int; peer_ip_bytes: bytes;
    # xff_line: bytes;
    # header_lines: tuple[ListenerSettings, bytes] | None, StreamProxy's header lines for one
    #     listener generation;
    # writing_paused: bool;
    # ended_streams: list[ProxiedStream], streams whose exchange is yet to hear that the stream
    #     has ended (see `reap`).

    def send_head(self, stream: Stream, status: int, head: bytes, end_stream: bool) -> None:
        """A response head as HTTP/1.1 lines (see `head_fields`)."""
        raise NotImplementedError

    def send_data(self, stream: Stream, data: bytes, credit: int = 0) -> None:
        raise NotImplementedError

    def finish(self, stream: Stream, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        raise NotImplementedError

    def reset(self, stream: Stream, code: int) -> None:
        raise NotImplementedError

    def refuse(self, stream_id: int, code: int) -> None:
        raise NotImplementedError

    def acknowledge(self, stream_id: int, credit: int) -> None:
        raise NotImplementedError


class Stream:
    """What a connection needs of a stream, whichever way it is forwarded."""

    __slots__ = ("connection", "out", "request_ended", "stream_id")

    def __init__(self, connection: StreamConnection, stream_id: int) -> None:
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

    def stop(self) -> None:
        """The listener stopped: its connections are cut (seed 003)."""
        self.cancel()

    def pause_backend(self) -> None:
        """The client is not taking response bytes as fast as they come."""

    def resume_backend(self) -> None:
        """The client caught up."""


class StreamProxy(Exchange):
    """The exchange of one HTTP/2 or HTTP/3 stream.

    The connection was accepted (access control, counters) once; a stream only takes its peer
    address and its per-connection header lines, computed once per listener generation. The
    request head arrives as the codec's field list and goes through the same field checks and
    forwarding code as an HTTP/1.1 client's, without being written out and parsed again. Its
    client side is the `ProxiedStream`, called by name: a response head (`respond`), body bytes
    (`send_body`), the end (`complete`), holding the request body back (`hold`, `release`), or
    a reset (`end`).
    """

    __slots__ = ("stream",)

    def attach(self, stream: ProxiedStream) -> None:
        """The exchange begins on `stream`: the connection's client, its own request."""
        self.stream = stream
        connection = stream.connection
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
        chunked: bool,
    ) -> None:
        """One request head from the stream: checked and started as an HTTP/1.1 client's."""
        self._begin_request(_clock())
        if self.counts_bytes:
            # What the head carried, as its fields: the codec's framing and compression aside.
            received = len(method) + len(path) + len(host)
            for name, value in fields:
                received += len(name) + len(value)
            self.received += received
        request: Request = self.parsing  # type: ignore[assignment]
        request.url = path
        request.method = method
        try:
            # nghttp2 has refused connection-specific fields, uppercase names and a
            # Content-Length that the DATA frames contradict (RFC 9113 8.2.2, 8.1.1).
            # The codecs' libraries have refused uppercase names (RFC 9113 8.2.1, RFC 9114
            # 4.2): each name is its own lower case.
            self.on_field(b"host", b"host", host)
            for name, value in fields:
                self.on_field(name, name, value)
            self.in_head = False
            if method == b"CONNECT":
                self.reject_status = 405
                raise _Reject
            if chunked:
                # A body of unknown length reaches an HTTP/1.1 backend chunked.
                request.chunked = request.has_body = True
            # Connection: close, as the stream ends with its one response.
            self._admit(request, False)
        except _Reject:
            self._reject(self.reject_status or 400)

    def _connection_headers(self, settings: ListenerSettings) -> bytes:
        connection = self.stream.connection
        cached = connection.header_lines
        if cached is None or cached[0] is not settings:
            cached = connection.header_lines = (
                settings,
                Exchange._connection_headers(self, settings),
            )
        return cached[1]

    def _send_head(
        self, request: Request, out: list[bytes], status: int, unsized: bool, bodiless: bool
    ) -> None:
        """The response head goes to the codec, which frames the body itself: no chunking and no
        connection fields; a body known to be empty ends the stream at the head."""
        self.rechunk = False
        self.keep_alive = False
        head = b"".join(out)
        self.stats.bytes_out += len(head)
        self.sent += len(head)
        self.stream.respond(status, head, bodiless)

    def _exchange_done(self, keep_alive: bool, now: float) -> None:
        """The stream ends with its one response."""
        self.stream.complete()
        self._close()

    def _continue(self) -> None:
        """No interim response on a stream: the codecs send final responses only, and a client
        that asked for 100-continue sends its body after its own wait (RFC 9110 10.1.1)."""

    # -- the client side: the stream -------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        writer = self.writer
        if writer is None:
            self.stream.send_body(data)
        else:
            writer.write(data)

    def _sender(self) -> Callable[[bytes], None]:
        return self.stream.send_body

    def _pause(self, reason: int) -> None:
        if not self.paused and not self.closed:
            self.stream.hold()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and not self.closed:
                self.stream.release()

    def _send_answer(self, status: int, head: bytes, body: bytes, throttled: bool) -> None:
        """An answer of the node's own (an error, a rule's redirect or fixed response, a 429):
        its head to the codec as fields, its body as DATA."""
        stream = self.stream
        self.sent += len(head)
        stream.respond(status, head, not body)
        if body:
            if throttled:
                self._write(body)
            else:
                self.sent += len(body)
                stream.send_body(body)
        stream.complete()

    def _client_closing(self) -> bool:
        return self.stream.closing

    def _end_client(self, abort: bool) -> None:
        # A stream cut before its response is complete is reset: CANCEL when the exchange gave
        # up on it (a stopped listener, a backend cut mid-response), INTERNAL_ERROR otherwise.
        self.stream.end(CANCEL if abort else INTERNAL_ERROR)

    def client_tls(self) -> ssl.SSLObject | None:
        return self.stream.connection.ssl_object

    def http_version(self, request: Request) -> str:
        return self.stream.connection.version


class CountingStreamProxy(CountsBytes, StreamProxy):
    """A stream's exchange on a listener whose access log is on: the response bytes it writes
    are counted (dataplane.accesslog.CountsBytes), the request's by the stream."""

    __slots__ = ()


# Marks the end of a request body among a stream's pending pieces.
_END = b""


def reap(ended: list[ProxiedStream]) -> None:
    """The exchanges of streams that have ended hear that their client is gone."""
    streams = ended[:]
    ended.clear()
    for stream in streams:
        stream._proxy_lost()


class ProxiedStream(Stream):
    """One stream served by a StreamProxy: the exchange's client.

    The request head and body go to the exchange as calls (the body re-chunked by the exchange
    when its length is unknown). The response comes as calls too, whether a backend's or the
    node's own: its head as HTTP/1.1 lines the codec turns into fields (`respond`), its body as
    `send_body`, its end as `complete`.
    """

    __slots__ = (
        "backend_paused",
        "closing",
        "head_request",
        "pending",
        "proxy",
        "reading",
        "responded",
    )

    def __init__(self, connection: StreamConnection, stream_id: int, *, head_request: bool) -> None:
        # Stream's fields, set here: a super() call costs more than the four assignments.
        self.connection = connection
        self.stream_id = stream_id
        self.out = Outbound()
        self.request_ended = False
        self.head_request = head_request
        self.reading = True
        self.closing = False
        self.responded = False
        self.backend_paused = False
        # Request body pieces the exchange is not reading yet, with the frame credit each
        # carries; _END marks the end of the body.
        self.pending: list[tuple[bytes, int]] = []
        runtime = self.connection.runtime
        # A listener whose access log is on counts each stream's bytes for its lines.
        kind = StreamProxy if runtime.access_log is None else CountingStreamProxy
        self.proxy = kind(runtime)

    def start(
        self,
        method: bytes,
        path: bytes,
        host: bytes,
        fields: list[tuple[bytes, bytes]],
        chunked: bool,
    ) -> None:
        proxy = self.proxy
        proxy.attach(self)
        if not self.closing:
            proxy.begin(method, path, host, fields, chunked)
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
            proxy.received += len(data)
            proxy.on_body(data)

    def hold(self) -> None:
        """The exchange takes no more of the request body for now."""
        self.reading = False

    def release(self) -> None:
        """The exchange takes the request body again: what waited goes first."""
        self.reading = True
        while self.pending and self.reading and not self.closing:
            data, credit = self.pending.pop(0)
            self._deliver(data)
            self.connection.acknowledge(self.stream_id, credit)

    def cancel(self) -> None:
        if self.closing:
            return
        proxy = self.proxy
        if not proxy.closed:
            # For the access log: why the request ended.
            proxy.termination = "client_closed"
        proxy._abort()

    def stop(self) -> None:
        if not self.closing:
            self.proxy.abort()

    # -- the response ----------------------------------------------------------------------------

    def respond(self, status: int, head: bytes, end_stream: bool) -> None:
        """The response head, as HTTP/1.1 lines that the codec turns into its fields (nghttp2
        does it in C)."""
        if self.closing:
            return
        self.responded = True
        self.connection.send_head(self, status, head, end_stream or self.head_request)

    def send_body(self, data: bytes) -> None:
        """Response body bytes, framed as the codec's DATA."""
        if data and not self.closing and not self.out.end:
            self.connection.send_data(self, data)

    def complete(self) -> None:
        """The response is all written: the stream ends once it is sent."""
        if self.responded and not self.closing and not self.out.end:
            self.connection.finish(self)

    def end(self, code: int) -> None:
        """The exchange is over: a stream whose response is not complete is reset with `code`,
        so the client does not take what it got for all of it."""
        if self.closing:
            return
        self.closing = True
        for _, credit in self.pending:
            self.connection.acknowledge(self.stream_id, credit)
        self.pending.clear()
        connection = self.connection
        if not self.out.end:
            connection.reset(self, code)
        # Not from inside the exchange's own call that ended it: a callback in the next loop
        # iteration tells it, one for every stream of the connection that ends meanwhile.
        ended = connection.ended_streams
        if not ended:
            connection.loop.call_soon(reap, ended)
        ended.append(self)

    def _proxy_lost(self) -> None:
        proxy = self.proxy
        if proxy is None:
            return
        proxy.connection_lost(None)
        # The exchange holds this stream as its client: dropping it now frees the stream by
        # reference counting instead of leaving a cycle per stream to the collector (8,000
        # instructions per request).
        self.proxy = None

    # -- flow control from the client side -------------------------------------------------------

    def pause_backend(self) -> None:
        if not self.backend_paused and self.proxy is not None:
            self.backend_paused = True
            self.proxy.pause_writing()

    def resume_backend(self) -> None:
        if self.backend_paused and self.proxy is not None:
            self.backend_paused = False
            self.proxy.resume_writing()


def head_fields(status: int, head: bytes) -> list[tuple[bytes, bytes]]:
    """The fields of a response head written as HTTP/1.1 lines ("HTTP/1.1 200 OK\r\n", then
    "Name: value\r\n" each): :status first, names lowered, values trimmed, connection-specific
    fields left out (RFC 9113 8.2.2, RFC 9114 4.2)."""
    fields = [(b":status", b"%d" % status)]
    lines = head.split(b"\r\n")
    for index in range(1, len(lines)):  # the status line first
        name, colon, value = lines[index].partition(b":")
        if colon and name:
            name = name.lower()
            if name not in HOP_BY_HOP:
                fields.append((name, value.strip(b" \t")))
    return fields


def start_proxied(
    connection: StreamConnection, stream_id: int, headers: list[tuple[bytes, bytes]], *, ended: bool
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
            if host is not None or (authority and field[1].lower() != authority.lower()):
                # RFC 9113 8.3.1: a second Host, or one naming another host than
                # :authority, leaves the rules and the backend to believe different hosts.
                path = b""
                break
            host = field[1]
        else:
            if name == b"content-length":
                if has_length or not field[1].isdigit():
                    # One length of digits only (RFC 9110 8.6): "+5", "0_5" or a second field
                    # could be read as another length by the backend.
                    path = b""
                    break
                has_length = True
            fields.append(field)
    if method == b"CONNECT":
        path = authority
    elif path[:1] != b"/" and (path != b"*" or method != b"OPTIONS"):
        # RFC 9113 8.3.1: origin form (or "*"); an absolute-form :path would be read as a
        # second authority by the exchange.
        path = b""
    if not path or not fits_request_line(method, path, authority):
        connection.refuse(stream_id, PROTOCOL_ERROR)
        return None
    stream = ProxiedStream(connection, stream_id, head_request=method == b"HEAD")
    stream.request_ended = ended
    connection.streams[stream_id] = stream
    if connection.writing_paused:
        stream.backend_paused = True
    # RFC 9113 8.3.1: :authority is the host. The proxy checks it as any client's; with no
    # authority at all, the request says so with an empty Host, as HTTP/1.1 does.
    stream.start(method, path, authority or host or b"", fields, not ended and not has_length)
    if connection.writing_paused and not stream.closing:
        stream.proxy.pause_writing()
    return stream
