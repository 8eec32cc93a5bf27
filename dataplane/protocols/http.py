"""The HTTP/1.1 codec for HTTP and HTTPS listeners: the client's connection.

Everything runs in asyncio.Protocol callbacks: httptools parses the client's bytes into the
neutral request head the exchange (dataplane.protocols.exchange) takes, one exchange at a time;
the response head the exchange builds is framed here (chunked for an HTTP/1.1 client when the
length is unknown, close-delimited for an HTTP/1.0 one, Connection fields), and the connection
goes on to the next request (keep-alive, pipelining) or closes. There is no await per request.

What only HTTP/1.1 has:
- framing checks: 414 request line over MAX_HEADER_BYTES, 431 request header block over it, 400
  bad chunking, 505 a version other than HTTP/1.0 and 1.1, 405 CONNECT; the connection is closed
  and nothing is forwarded;
- pipelining: a request read while another is in flight waits for it, and reading pauses;
- bytes after the connection's last request (Connection: close, HTTP/1.0) are ignored: the client
  gets that request's response, then the connection closes;
- interim responses: a backend's 1xx reaches an HTTP/1.1 client, and the node answers
  `Expect: 100-continue` itself when it starts sending the body;
- WebSocket (seed 003, always on): a GET with `Connection: Upgrade` and `Upgrade: websocket` is
  forwarded with both headers; when the backend answers 101, the connection becomes a byte tunnel
  in both directions (with the same backpressure) until either side closes or nothing moves for
  the idle timeout. Any other Upgrade is not forwarded.
- a TLS handshake that agreed on ALPN "h2" hands the connection to dataplane.protocols.h2.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

import httptools

from dataplane.heads import field_line, line_version
from dataplane.protocols.exchange import (
    _PAUSE_DONE,
    _PAUSE_PIPELINE,
    MAX_HEADER_BYTES,
    Exchange,
    Request,
    _clock,
    _Reject,
)

if TYPE_CHECKING:
    from dataplane.protocols import ListenerSettings
    from dataplane.upstream import HttpUpstream

log = logging.getLogger(__name__)

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class HttpProxy(Exchange):
    """The client side of one HTTP or HTTPS connection: its HTTP/1.1 codec, and its exchange."""

    __slots__ = (
        "early",
        "first_read",
        "head_bytes",
        "head_mark",
        "parser",
        "queue",
        "registered",
        "transport",
    )

    # The exchange's __init__ is the codec's: the codec's own fields begin with the connection
    # (one Python-level call less per connection than an __init__ of its own).

    # -- connection ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.parser: httptools.HttpRequestParser | None = None
        self.registered = False
        # WebSocket: client bytes sent after the upgrade request before the backend agreed.
        self.early = b""
        # Where the head being parsed began in the current read, and its bytes so far.
        self.head_mark = 0
        self.head_bytes = 0
        # Requests read while one is in flight (pipelining).
        self.queue: collections.deque[Request] = collections.deque()
        # The connection's first read, until its first request head is complete (the version of
        # a request that ends the connection is read off it: on_headers_complete).
        self.first_read: bytes | None = None
        settings = self.settings
        if self.runtime.settings is None:
            # The listener stopped while this connection was still in its TLS handshake.
            self.closed = True
            transport.abort()
            return
        if settings.tls is not None:
            self.stats.tls_handshakes += 1
        if settings.http2:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
                # The protocol object exists before the handshake that chose h2; hand over.
                from dataplane.protocols.h2 import Http2Connection

                connection = Http2Connection(self.runtime)
                transport.set_protocol(connection)  # type: ignore[attr-defined]
                self.closed = True
                connection.connection_made(transport)
                return
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_ip, self.peer_port = peer[0], peer[1]
        acl = settings.acl
        if acl is not None and not acl.allows(self.peer_ip):
            self.stats.denied_connections += 1
            self.closed = True
            transport.abort()
            return
        self.registered = True
        self.runtime.connections.add(self)
        stats = self.stats
        stats.active_connections += 1
        stats.total_connections += 1
        self._serve(settings)

    def _serve(self, settings: ListenerSettings) -> None:
        """Ready to read requests from a client whose peer address is known and accepted."""
        self.peer_ip_bytes = self.peer_ip.encode()
        self.xff_line = field_line(b"X-Forwarded-For", self.peer_ip_bytes)
        self.conn_headers = self._connection_headers(settings)
        self._use_bucket(settings)
        self.parser = httptools.HttpRequestParser(self)
        self._go_idle(_clock())

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.reads += 1
        if self.reads == 1:
            self.first_read = data
        self.stats.bytes_in += len(data)
        if self.tunnel:
            upstream = self.upstream
            if upstream is not None:
                self.deadline = self.loop.time() + self.settings.idle_timeout
                upstream.transport.write(data)  # type: ignore[union-attr]
            return
        # Bytes of this read that the parser handed to callbacks; what is left over when a
        # request head is still incomplete is (at most) that head's part of this read.
        self.accounted = 0
        self.head_began = False
        try:
            self.parser.feed_data(data)  # type: ignore[union-attr]
        except httptools.HttpParserUpgrade as exc:
            # Nothing after an upgrade request can be read as HTTP. A WebSocket request waits for
            # the backend's 101 (what the client sent meanwhile goes into the tunnel); any other
            # upgrade was not forwarded, so the backend answers it as a plain request.
            self.early += data[exc.args[0] :]
            self._pause(_PAUSE_DONE)
            return
        except httptools.HttpParserError as exc:
            if self.closed:
                return
            cause = exc.__context__
            if cause is None and self.parsing is None and self.paused & _PAUSE_DONE:
                # Bytes after the connection's last request (Connection: close, HTTP/1.0):
                # httptools refuses them; they are neither read nor answered (RFC 9112 9.6).
                return
            if cause is not None and not isinstance(cause, _Reject):
                log.error("error while handling a request", exc_info=cause)
            self._reject(self.reject_status or 400)
            return
        if self.in_head:
            if self.head_began:
                self.head_bytes = len(data) - self.head_mark
            else:
                self.head_bytes += len(data)
            if self.head_bytes > MAX_HEADER_BYTES:
                request = self.parsing
                # Nothing but the request line yet: the target is what is too long.
                too_long = request is not None and self.head_size <= len(request.url)
                self._reject(414 if too_long else 431)

    def eof_received(self) -> bool:
        if self.tunnel:
            self._end_tunnel()
            return False
        self.draining = True
        request = self.current
        if request is not None and not request.complete:
            # The client left in the middle of its request (an upload abandoned midway): it can
            # never be complete, so neither the backend's answer nor its connection is of any use.
            if self.response_started:
                self._abort()
            else:
                self._close()
            return False
        # A plain-TCP client that half-closes after its request still gets the response (TLS
        # transports cannot stay half-open); the connection closes after it.
        return request is not None and self.settings.tls is None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.tunnel:
            # Let what the client sent last (a WebSocket close frame) reach the backend.
            self._end_tunnel()
        # The parser holds this proxy through its callbacks: without it, a closed connection
        # is freed by reference counting, not left to the cycle collector.
        self.parser = None
        Exchange.connection_lost(self, exc)
        if self.registered:
            self.registered = False
            self.runtime.connections.discard(self)
            self.stats.active_connections -= 1

    # -- parser callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        # One clock reading for the request timeout and the request's duration.
        self._begin_request(_clock())
        self.head_mark = self.accounted
        self.head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.parsing.url += url  # type: ignore[union-attr]
        self.head_size += len(url)
        self.accounted += len(url)
        if self.head_size > MAX_HEADER_BYTES:
            self.reject_status = 414
            raise _Reject

    def on_headers_complete(self) -> None:
        request: Request = self.parsing  # type: ignore[assignment]
        self.in_head = False
        if self.closed:
            # Bytes after a request that ended the connection are not requests any more.
            return
        first_read = self.first_read
        if first_read is not None:
            self.first_read = None
            if self.head_mark != 0:
                first_read = None  # another request came first in that read
        parser = self.parser
        request.method = parser.get_method()  # type: ignore[union-attr]
        if request.method == b"CONNECT":
            self.reject_status = 405
            raise _Reject
        keep_alive = parser.should_keep_alive()  # type: ignore[union-attr]
        tokens = request.connection_tokens
        if keep_alive and (tokens is None or b"keep-alive" not in tokens):
            # Only HTTP/1.1 stays alive without asking; this spares formatting the version.
            request.version = "1.1"
        else:
            # Read off the connection's first read when it begins with this request's line
            # (heads.line_version); httptools formats it otherwise.
            known = 0
            if first_read is not None:
                known = line_version(first_read, request.method, request.url)
            if known == 11:
                version = "1.1"
            elif known == 10:
                version = "1.0"
            else:
                version = parser.get_http_version()  # type: ignore[union-attr]
            request.version = version
            if version not in {"1.0", "1.1"}:
                # httptools also reads "HTTP/2.0" and "HTTP/0.9" request lines.
                self.reject_status = 505
                raise _Reject
        self._admit(request, keep_alive)

    # -- exchange hooks --------------------------------------------------------------------------

    def _admitted(self, request: Request) -> None:
        if self.current is None:
            self._start(request)
        else:
            self.queue.append(request)
            self._pause(_PAUSE_PIPELINE)

    def _exchange_done(self, keep_alive: bool, now: float) -> None:
        """Go on to the next request (pipelined, or the next one read) or close."""
        if not keep_alive or self.closed:
            self._close()
            return
        if self.queue:
            following = self.queue.popleft()
            if not self.queue:
                self._resume(_PAUSE_PIPELINE)
            # Out of the client's read: _start must read the clock, not take the head's time.
            self.head_began = False
            self._start(following)
            return
        self._go_idle(now or _clock())

    def upstream_interim(self, upstream: HttpUpstream, head: bytes) -> None:
        """A 1xx before the final response (103 Early Hints, 100 Continue): a proxy passes it on
        (RFC 9110 15.2), to HTTP/1.1 clients only, since an HTTP/1.0 one cannot read it. The node
        answers `Expect: 100-continue` itself and never forwards the expectation, so a client
        that asked has had its one 100 Continue and does not get the backend's too."""
        request = self.current
        if request is None or request.version != "1.1":
            return
        if upstream.status == 100 and request.expect_continue:
            return
        if not head.startswith(b"HTTP/1.1 "):
            head = b"HTTP/1.1" + head[8:]
        self.stats.bytes_out += len(head)
        self.out.append(head)

    def _send_head(
        self, request: Request, out: list[bytes], status: int, unsized: bool, bodiless: bool
    ) -> None:
        """Frame the response head for an HTTP/1.x client: `out` holds its lines so far, without
        the blank line; `unsized` says the client cannot know the body's length up front."""
        keep_alive = request.keep_alive and request.complete and not self.draining
        self.rechunk = False
        if unsized:
            if request.version == "1.1":
                out.append(b"Transfer-Encoding: chunked\r\n")
                self.rechunk = True
            else:
                keep_alive = False
        if request.version != "1.1":
            out.append(b"Connection: keep-alive\r\n" if keep_alive else b"Connection: close\r\n")
        elif not keep_alive:
            out.append(b"Connection: close\r\n")
        self.keep_alive = keep_alive
        out.append(b"\r\n")
        data = b"".join(out)
        self.stats.bytes_out += len(data)
        self.out.append(data)

    def _continue(self) -> None:
        """Tell a client that waits for it (Expect: 100-continue) to send its request body."""
        self.transport.write(_CONTINUE)

    def _go_idle(self, now: float) -> None:
        if self.draining:
            self._close()
            return
        self._set_deadline(self.settings.idle_timeout, now)

    # -- the client side: the connection's transport ---------------------------------------------

    def _write(self, data: bytes) -> None:
        writer = self.writer
        if writer is None:
            self.transport.write(data)
        else:
            writer.write(data)

    def _sender(self) -> Callable[[bytes], None]:
        return self.transport.write

    def _pause(self, reason: int) -> None:
        if not self.paused and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and not self.closed:
                self.transport.resume_reading()

    def _send_answer(self, status: int, head: bytes, body: bytes, throttled: bool) -> None:
        if throttled:
            self._write(head + body)
        else:
            self.sent += len(head) + len(body)
            self.transport.write(head + body)

    def _client_closing(self) -> bool:
        return self.transport.is_closing()

    def _end_client(self, abort: bool) -> None:
        if abort:
            self.transport.abort()
        else:
            self.transport.close()

    def client_tls(self) -> ssl.SSLObject | None:
        return self.transport.get_extra_info("ssl_object")

    def http_version(self, request: Request) -> str:
        return "HTTP/" + request.version

    # -- WebSocket tunnel ------------------------------------------------------------------------

    def _begin_tunnel(self, upstream: HttpUpstream, head: bytes) -> None:
        """The backend accepted the WebSocket upgrade: from now on both sides are bytes."""
        self.response_started = True
        self.tunnel = True
        upstream.tunnel = True
        # The 101 goes out as the backend wrote it, Connection and Upgrade included.
        data = head + b"\r\n"
        stats = self.stats
        stats.responses[1] += 1
        stats.bytes_out += len(data)
        self.out.append(data)
        self.deadline = self.loop.time() + self.settings.idle_timeout
        early, self.early = self.early, b""
        if early:
            upstream.write(early)
        self._resume(_PAUSE_DONE | _PAUSE_PIPELINE)

    def tunnel_data(self, data: bytes) -> None:
        if self.closed:
            return
        self.stats.bytes_out += len(data)
        self.deadline = self.loop.time() + self.settings.idle_timeout
        self._write(data)

    def _end_tunnel(self) -> None:
        """One side closed: close the other once its pending bytes are written."""
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            upstream.owner = None
            if not upstream.closed:
                upstream.closed = True
                upstream.transport.close()  # type: ignore[union-attr]
        self._release_backend()
        self._close()
