"""HTTP/2 on HTTPS listeners (seeds 000, 001 and 003: "Enable HTTP/2").

A TLS handshake that agreed on ALPN "h2" hands the connection from HttpProxy to Http2Connection.
Framing, HPACK, stream states and flow control are nghttp2's (dataplane.nghttp2); the connection
only decides what each stream means. What happens to each request stream depends on the listener's
server group:

- HTTP and HTTPS groups (seed 001's FAQ: "Layer 7 listeners use HTTP/1.1 to distribute network
  traffic to backend servers"): the stream gets an exchange of its own
  (dataplane.protocols.streams, dataplane.protocols.exchange), the one HTTP/1.1 clients' requests
  go through. Its request head arrives as nghttp2's field list and its response leaves as
  HEADERS and DATA frames; nothing is written as HTTP/1.1 to be parsed again. So forwarding
  rules, persistence, compression, bandwidth, X-Forwarded-* headers, pooled backend connections
  and the dataplane's own 502/503/504 answers work for h2 clients exactly as for HTTP/1.1 ones,
  from one implementation.
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
import ssl
from typing import TYPE_CHECKING, Any

from dataplane.heads import field_line
from dataplane.nghttp2 import (
    NO_ERROR,
    REFUSED_STREAM,
    Http2Error,
    Session,
)
from dataplane.protocols.exchange import MAX_HEADER_BYTES
from dataplane.protocols.streams import Stream, StreamConnection, start_proxied

if TYPE_CHECKING:
    from dataplane.protocols import ListenerSettings
    from dataplane.protocols.handle import ListenerHandle

log = logging.getLogger(__name__)

# Receive windows offered to clients: large enough that one stream can fill a fast link, small
# enough that 128 stalled streams cannot make the dataplane buffer much.
STREAM_WINDOW = 1 << 20
CONNECTION_WINDOW = 16 << 20
MAX_CONCURRENT_STREAMS = 128
# Response bytes a stream may hold for a client before its backend is paused, and resumed.
SEND_HIGH_WATER = 256 * 1024
SEND_LOW_WATER = 64 * 1024


# -- the connection ------------------------------------------------------------------------------


class Http2Connection(StreamConnection):
    """The client side of one HTTP/2 connection: frames in, streams out.

    An asyncio protocol by its methods rather than by inheriting asyncio.Protocol, so that it can
    compile as an extension type (h2.pxd).
    """

    # The client's protocol, as the access log writes it (dataplane.protocols.streams).
    version = "HTTP/2"

    __slots__ = (
        "closed",
        "draining",
        "flush_scheduled",
        "held",
        "idle_timer",
        "registered",
        "session",
        "settings",
        "stats",
        "transport",
        "upstreams",
    )

    def __init__(self, runtime: ListenerHandle) -> None:
        self.runtime = runtime
        self.loop: asyncio.AbstractEventLoop = runtime.loop
        self.stats = runtime.stats
        self.settings: ListenerSettings = runtime.settings  # type: ignore[assignment]
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        # The client's TLS session: its streams' client-certificate headers and log lines.
        self.ssl_object: ssl.SSLObject | None = None
        self.session: Session | None = None
        self.streams: dict[int, Stream] = {}
        self.ended_streams: list[Stream] = []
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
        self.ssl_object = transport.get_extra_info("ssl_object")
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
        self.xff_line = field_line(b"X-Forwarded-For", self.peer_ip_bytes)
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

    def eof_received(self) -> bool | None:
        """The client closed its side: the transport closes (asyncio.Protocol's default)."""
        return None

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
            else:
                # Still too much queued for the client: resumed by `flush` once it has drained,
                # not left paused for good.
                self.held.add(stream)

    # -- session events (called by nghttp2 through the Session) ----------------------------------

    def on_request(self, stream_id: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        settings = self.runtime.settings
        if self.draining or settings is None:
            self.refuse(stream_id, REFUSED_STREAM)
            return
        self.settings = settings
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if settings.grpc:
            from dataplane.protocols.grpc import GrpcStream

            stream: Stream | None = GrpcStream.open(self, stream_id, headers, ended=ended)
        else:
            stream = start_proxied(self, stream_id, headers, ended=ended)
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

    def refuse(self, stream_id: int, code: int) -> None:
        if self.session is not None and not self.closed:
            self.session.reset(stream_id, code)
            self.schedule_flush()

    def send_headers(
        self, stream: Stream, headers: list[tuple[bytes, bytes]], *, end_stream: bool = False
    ) -> None:
        if self.streams.get(stream.stream_id) is stream and not self.closed:
            body = None if end_stream else stream.out
            submitted = self.session.respond(stream.stream_id, headers, body)  # type: ignore[union-attr]
            self._head_submitted(stream, submitted, end_stream)

    def send_head(self, stream: Stream, status: int, head: bytes, end_stream: bool) -> None:
        if self.streams.get(stream.stream_id) is stream and not self.closed:
            body = None if end_stream else stream.out
            submitted = self.session.respond_head(stream.stream_id, status, head, body)  # type: ignore[union-attr]
            self._head_submitted(stream, submitted, end_stream)

    def _head_submitted(self, stream: Stream, submitted: bool, end_stream: bool) -> None:
        if not submitted:
            # The client reset it, or the connection is closing.
            self._drop(stream)
            return
        if end_stream:
            stream.out.end = stream.out.ended = True
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
        self.refuse(stream.stream_id, code)
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
            # RFC 9113 8.1: a complete response may end the request early with NO_ERROR, once
            # the response is out: a RST_STREAM submitted while a HEADERS-only response is still
            # queued makes nghttp2 drop that response (a gRPC trailers-only answer, a 204).
            self.schedule_flush()
            self.loop.call_soon(self.refuse, stream.stream_id, NO_ERROR)
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

    def _cut_streams(self, *, stopping: bool = False) -> None:
        """End every stream in flight, and the connections to gRPC backends; `stopping` when the
        listener stops (for the access log: listener_stopped, not client_closed)."""
        streams = list(self.streams.values())
        self.streams.clear()
        self.held.clear()
        for stream in streams:
            if stopping:
                stream.stop()
            else:
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
        self._cut_streams(stopping=True)
        self.transport.abort()
