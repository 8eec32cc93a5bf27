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
of filling the dataplane's memory. The reader's windows alone do not bound that: nghttp2 takes
as much as they allow, and a peer that offers large windows and then stops reading its socket
would have it all land in a transport that never drains. So a backend connection whose
transport is paused gets nothing more from nghttp2, and while a client connection's transport
is paused (or a call's response waits past SEND_HIGH_WATER), the call's response bytes are not
acknowledged to the backend: its own window then holds it back (`GrpcStream.pause_backend`).

A backend connection the node gives up (abandoned and its last call over, broken, or its client
connection gone) ends with a GOAWAY and a graceful close while the backend reads what the node
writes, and is cut at once when it does not: what is left unsent is for calls that are over
(`GrpcUpstream.close`).

When the dataplane itself must fail a call, it answers as a gRPC server would, with a
trailers-only response: UNAVAILABLE (14) when no server is eligible or reachable, and
DEADLINE_EXCEEDED (4) when no response headers arrive within the response timeout.

Issue 20's traffic policy, as it applies to calls:
- Retries (dataplane.retry): a call goes to another server only when connecting to its server
  failed, so nothing of it reached a server; it then goes to a server not tried yet, at most the
  listener's `retries` times and within its retry budget. Every gRPC call is a POST, and its
  messages stream to the backend as they arrive, so a call a server answered or broke is never
  sent again; retrying by grpc-status is left to the client's own retry policy. A call the server
  says it processed none of (REFUSED_STREAM, or a stream above the last stream id of its GOAWAY)
  goes to the same server again with its body, while that is small enough to have been kept
  (`GrpcStream.unprocessed`).
- Passive health checks (dataplane.outlier): a call's outcome is known from its trailers. It is a
  failure when the response head is 5xx, when its grpc-status says the server could not serve it
  (FAILED_CALL: UNKNOWN, INTERNAL, UNAVAILABLE, DATA_LOSS, the codes Envoy maps to 5xx), when the
  server reset or closed the call before its response head (as the node's 502 for HTTP), when no
  head arrived within the response timeout (as 504), and when the connection could not be opened.
  Any other outcome is a success.
- Server states: the node cuts a server's backend connections (`GrpcUpstream.cut`) when it goes
  into maintenance and at a draining server's deadline; their calls end as the node's
  UNAVAILABLE, or with a reset stream once their response had begun.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from dataplane.nghttp2 import (
    CANCEL,
    INTERNAL_ERROR,
    NO_ERROR,
    REFUSED_STREAM,
    Http2Error,
    Outbound,
    Session,
)
from dataplane.protocols import HOP_BY_HOP
from dataplane.protocols.h2 import (
    CONNECTION_WINDOW,
    SEND_LOW_WATER,
    STREAM_WINDOW,
    Http2Connection,
)
from dataplane.protocols.streams import Stream
from dataplane.retry import next_server

if TYPE_CHECKING:
    from dataplane.balancing import Backend
    from dataplane.protocols import ListenerSettings

log = logging.getLogger(__name__)

# gRPC status codes (grpc/doc/statuscodes.md).
DEADLINE_EXCEEDED = 4
RESOURCE_EXHAUSTED = 8
UNAVAILABLE = 14
# grpc-status values that say the server could not serve the call (UNKNOWN, INTERNAL,
# UNAVAILABLE, DATA_LOSS), as the HTTP status each counts as for the passive health checks
# (Envoy's grpcToHttpStatus). Every other status is the application's answer: a success.
FAILED_CALL = {b"2": 500, b"13": 500, b"14": 503, b"15": 500}
# A call's request body is kept for sending again while it is this small: a backend that refuses
# a stream unprocessed (REFUSED_STREAM, RFC 9113 8.7) or goes away without it (GOAWAY, 6.8) leaves
# it safe to send again, and a larger body is not held in memory for that.
REPLAY_LIMIT = 64 * 1024
MAX_REFUSALS = 3
# A backend frees a slot of its concurrent-stream limit once it has finished a stream on its own
# side, which can lag the stream's end as the node saw it (grpcio's does): a refused call sent
# again at once can meet the same full limit, and nghttp2's queued streams with it. Each attempt
# after a refusal waits twice as long as the one before: 5, 10 and 20 ms.
REFUSAL_BACKOFF = 0.005
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


class GrpcUpstream(asyncio.Protocol):
    """One HTTP/2 connection to a gRPC backend, used by the calls of one client connection.

    nghttp2 (a client session of dataplane.nghttp2) does the framing, HPACK and flow control, as
    it does for the client's own connection.
    """

    def __init__(self, owner: Http2Connection, key: tuple[str, int]) -> None:
        self.owner = owner
        self.key = key
        self.loop = owner.loop
        self.session: Session | None = None
        self.transport: asyncio.Transport | None = None
        # Done once the backend's first SETTINGS arrived; calls that find the connection still
        # opening wait on it.
        self.connected: asyncio.Future[None] = self.loop.create_future()
        self.streams: dict[int, GrpcStream] = {}
        self.usable = True
        self.flush_scheduled = False
        # The transport's buffer is over its high-water mark: the backend is not reading.
        self.writing_paused = False
        # Cut by the node: its server went into maintenance or reached its drain deadline.
        self.out_of_service = False

    async def open(self) -> None:
        """Connect and wait for the backend's SETTINGS; raises OSError or TimeoutError, which the
        calls waiting on it get too."""
        try:
            await asyncio.wait_for(self._open(), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            self.abandon(exc)
            raise

    async def _open(self) -> None:
        await self.loop.create_connection(lambda: self, *self.key)
        # Until its SETTINGS arrive, a backend's stream limit is unknown and nghttp2 would open
        # every call at once, for the backend to refuse those beyond its limit (REFUSED_STREAM)
        # after their bodies were sent. Once it is known, nghttp2 holds the surplus HEADERS.
        await asyncio.shield(self.connected)

    def abandon(self, exc: Exception) -> None:
        """Open no new call on this connection: the client connection's next call to this
        server opens a fresh one, and the calls waiting for this one to open get `exc`. The
        calls already on it finish; it closes once they have (`flush`)."""
        self.usable = False
        if self.owner.upstreams.get(self.key) is self:
            del self.owner.upstreams[self.key]
        if not self.connected.done():
            self.connected.set_exception(exc)
            # Retrieved here: no other call may be waiting for it.
            self.connected.exception()
        self.schedule_flush()

    # -- transport callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.out_of_service:
            # Cut while it was opening: the calls waiting on it have gone elsewhere.
            transport.abort()
            return
        self.session = Session(
            self,
            client=True,
            # What a backend may open towards the node: nothing (push is off).
            max_concurrent_streams=0,
            stream_window=STREAM_WINDOW,
            connection_window=CONNECTION_WINDOW,
        )
        self.flush()

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session is None:
            return
        try:
            session.receive(data)
        except Http2Error as exc:
            # nghttp2 has queued a GOAWAY naming the error; send it and go.
            log.info("gRPC backend %s:%d broke HTTP/2: %s", *self.key, exc)
            self.flush()
            self.close()
            return
        self.flush()
        self.owner.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.abandon(exc or ConnectionError("the backend closed the connection"))
        # The session refers back to this connection; free nghttp2's memory now, not at GC.
        self.session = None
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.upstream_failed("the backend closed the connection")
        self.owner.flush()

    def pause_writing(self) -> None:
        # nghttp2's frames stay in nghttp2 meanwhile (`flush`): the request bodies stay in their
        # Outbounds, unacknowledged, so the clients wait instead of the node buffering for them
        # as much as the backend's windows allow.
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.flush()

    # -- session events (called by nghttp2 through the Session) ----------------------------------

    def on_response(self, stream_id: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        status = headers[0][1] if headers and headers[0][0] == b":status" else b""
        if status[:1] == b"1" and not ended:
            # An interim response: the final head follows in another HEADERS frame.
            return
        # A trailers-only response (an immediate error) ends in its one HEADERS frame.
        stream.response_headers(headers, ended=ended)
        if ended:
            self._ended(stream_id, stream)

    def on_trailers(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if stream.responded:
            stream.response_trailers(headers)
        else:
            # The final head after an interim one comes as a plain HEADERS block.
            stream.response_headers(headers, ended=False)

    def on_data(self, stream_id: int, data: bytes, credit: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            self.acknowledge(stream_id, credit)
        else:
            stream.response_data(data, credit)

    def on_end(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._ended(stream_id, stream)

    def _ended(self, stream_id: int, stream: GrpcStream) -> None:
        del self.streams[stream_id]
        if not stream.request_out.ended:
            # The call is over (RFC 9113 8.1): the rest of its request is not needed.
            self.session.reset(stream_id, NO_ERROR)  # type: ignore[union-attr]
            self.schedule_flush()
        stream.response_end()

    def on_close(self, stream_id: int, code: int) -> None:
        """nghttp2 closed the stream; one still expecting its response was reset."""
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        if code == REFUSED_STREAM:
            stream.refused()
        else:
            stream.upstream_failed(f"the backend reset the stream (error code {code})")

    def on_settings(self) -> None:
        if not self.connected.done():
            self.connected.set_result(None)

    def on_goaway(self, last_stream_id: int, code: int) -> None:
        # The streams above last_stream_id were not processed (RFC 9113 6.8): they go again on a
        # fresh connection, this one taking no new stream. nghttp2 closes them next, as refused,
        # which finds them gone from `streams`. The ones the backend took finish here.
        self.abandon(ConnectionError("the backend is going away"))
        for pending_id in [sid for sid in self.streams if sid > last_stream_id]:
            self.streams.pop(pending_id).unprocessed("the backend is going away")

    # -- streams ---------------------------------------------------------------------------------

    def open_stream(
        self, stream: GrpcStream, headers: list[tuple[bytes, bytes]], *, end: bool
    ) -> int:
        """Raises Http2Error when the connection can open no more streams."""
        session = self.session
        if session is None or not self.usable:
            # Lost between connecting and this call's turn.
            raise Http2Error("the connection to the backend is closed")
        stream_id = session.request(headers, None if end else stream.request_out)
        self.streams[stream_id] = stream
        self.schedule_flush()
        return stream_id

    def send(self, stream_id: int) -> None:
        """The stream's request Outbound has more for nghttp2 (or its end). A connection no
        longer `usable` still carries the calls it has: a backend going away processes those
        its GOAWAY covers, and they need their request bodies and window to finish."""
        if self.session is not None:
            self.session.resume(stream_id)
            self.schedule_flush()

    def acknowledge(self, stream_id: int, credit: int) -> None:
        if credit and self.session is not None:
            self.session.acknowledge(stream_id, credit)
            self.schedule_flush()

    def reset(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)
        if self.session is not None:
            self.session.reset(stream_id, CANCEL)
            self.schedule_flush()

    def schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.session is None or self.transport is None or self.transport.is_closing():
            return
        if not self.writing_paused:
            try:
                data = self.session.data_to_send()
            except Http2Error as exc:
                log.info("gRPC backend %s:%d: %s", *self.key, exc)
                self.close()
                return
            if data:
                self.transport.write(data)
        if not self.usable and not self.streams:
            # Abandoned and its last call over: nothing will use it again, and its client
            # connection, which no longer lists it, would not close it.
            self.close()

    def close(self) -> None:
        """Close the connection for good, its calls over or failed. A backend reading what the
        node writes gets the frames still queued (resets of cancelled calls) and a GOAWAY, then
        the end of the stream. One that left bytes unread is cut at once: the bytes are for calls
        that are over, and a graceful close would keep them, and the descriptor, for as long as
        the backend keeps its end open without reading."""
        self.usable = False
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        session = self.session
        if session is not None and not self.writing_paused:
            session.terminate(NO_ERROR)
            try:
                data = session.data_to_send()
            except Http2Error:
                # Broken already: its GOAWAY, if any, went out with the last flush.
                data = b""
            if data:
                transport.write(data)
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()

    def cut(self) -> int:
        """Close this connection and end its calls now: its server is out of service (the node
        calls this on maintenance and at a draining server's deadline). Returns 1 when it was
        open or opening, for the node's count of what it closed."""
        if self.out_of_service:
            return 0
        self.out_of_service = True
        # Calls still waiting for it to open fail over as after a failed connect.
        self.abandon(ConnectionAbortedError("the server was taken out of service"))
        streams = list(self.streams.values())
        self.streams.clear()
        if self.transport is not None:
            self.transport.abort()
        for stream in streams:
            stream.upstream_failed("the server was taken out of service", failure=False)
        self.owner.flush()
        return 1


class GrpcStream(Stream):
    """One gRPC call: a client stream relayed to a stream on a backend connection."""

    __slots__ = (
        "again",
        "backend",
        "client_ip",
        "headers",
        "observed",
        "paused",
        "refusals",
        "replay",
        "request_out",
        "responded",
        "server",
        "settings",
        "timer",
        "tried",
        "upstream",
        "upstream_id",
        "withheld",
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
        self.request_out = Outbound(on_sent=self._request_sent)
        # The body so far, while it is small enough to send again should the backend not process
        # the stream (`unprocessed`); None past REPLAY_LIMIT or once answered.
        self.replay: bytearray | None = bytearray()
        self.refusals = 0
        # The wait before sending a refused call again (REFUSAL_BACKOFF).
        self.again: asyncio.TimerHandle | None = None
        # `backend` holds the server while the call counts in its `active`; `server` is the
        # one the call went to last, whose health its outcome says something of.
        self.backend: Backend | None = None
        self.server: Backend | None = None
        self.upstream: GrpcUpstream | None = None
        self.upstream_id = 0
        self.responded = False
        # Servers whose connect failed for this call, once a retry was considered.
        self.tried: list[Backend] | None = None
        # The outcome went to the passive health checks (once per call and server).
        self.observed = False
        self.timer: asyncio.TimerHandle | None = None
        # The client connection is not taking response bytes as fast as they come
        # (`pause_backend`): the credit of what nghttp2 took from `out` meanwhile is `withheld`
        # from the backend instead of reopening its window.
        self.paused = connection.writing_paused
        self.withheld = 0

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
        backend = settings.route.pick(stream.client_ip)
        if backend is None:
            stream._fail(UNAVAILABLE, "no healthy backend server")
        else:
            stream._use(backend)
        return stream

    # -- choosing and reaching a backend ---------------------------------------------------------

    def _use(self, backend: Backend) -> None:
        self.backend = self.server = backend
        self.observed = False
        backend.active += 1
        backend.requests += 1
        self._reach(backend)

    def _reach(self, backend: Backend) -> None:
        key = (backend.address, backend.port)
        upstream = self.connection.upstreams.get(key)
        if upstream is not None and upstream.usable and upstream.connected.done():
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
            self._connect_failed(backend, exc, counted=not upstream.out_of_service)
            return
        if connection.streams.get(self.stream_id) is not self or self.backend is not backend:
            return
        self._attach(upstream)

    def _connect_failed(self, backend: Backend, exc: Exception, *, counted: bool = True) -> None:
        """Nothing of the call reached `backend`: it may go to another server. `counted` is
        False when the node itself cut the connection (server states), or the connection could
        open no more streams: neither says anything of the server's health."""
        self._release()
        if counted:
            log.info(
                "cannot connect to gRPC backend %s (%s:%d): %s",
                backend.id,
                backend.address,
                backend.port,
                exc or type(exc).__name__,
                extra={"listener_id": self.settings.listener.id, "backend_id": backend.id},
            )
            backend.connect_failures += 1
            outlier = self.settings.route.outlier
            if outlier is not None:  # passive health checks (dataplane.outlier)
                outlier.connect_failed(backend)
            self.observed = True
        if self.connection.streams.get(self.stream_id) is not self:
            return
        other = self._next_server(backend)
        if other is not None:
            self._use(other)
            return
        self._fail(UNAVAILABLE, "no backend server reachable")

    def _next_server(self, failed: Backend) -> Backend | None:
        """The server to send the call to instead of `failed`, when the listener's retries and
        its budget allow one more (dataplane.retry); None: no retry, counted when it is the
        budget that refused."""
        settings = self.settings
        other, tried = next_server(settings, settings.route, self.client_ip, self.tried, failed)
        if other is not None:
            self.tried = tried
        return other

    def _attach(self, upstream: GrpcUpstream) -> None:
        self.upstream = upstream
        out = self.request_out
        end = out.end and not out.chunks and not out.trailers
        try:
            self.upstream_id = upstream.open_stream(self, self.headers, end=end)
        except Http2Error as exc:
            # The connection is going away or has spent its stream ids: a fresh one, elsewhere.
            self.upstream = None
            upstream.abandon(exc)
            self._connect_failed(self.backend, exc, counted=False)  # type: ignore[arg-type]
            return
        if end:
            out.ended = True
        self.out.on_sent = self._response_sent
        self.pump_request()

    # -- client to backend -----------------------------------------------------------------------

    def request_data(self, data: bytes, credit: int) -> None:
        replay = self.replay
        if replay is not None:
            if len(replay) + len(data) > REPLAY_LIMIT:
                self.replay = None
            else:
                replay += data
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
        if (
            upstream is None
            or upstream.streams.get(self.upstream_id) is not self
            or self.request_out.ended
        ):
            return
        upstream.send(self.upstream_id)

    def _request_sent(self, credit: int) -> None:
        self.connection.acknowledge(self.stream_id, credit)

    # -- backend to client -----------------------------------------------------------------------

    def response_headers(self, headers: list[tuple[bytes, bytes]], *, ended: bool) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.responded = True
        self.replay = None
        status = next((value for name, value in headers if name == b":status"), b"0")
        if status[:1].isdigit():
            self.settings.stats.responses[int(status[:1])] += 1
            if status[:1] == b"5":
                self._observe(int(status))
            elif ended:
                # Trailers-only: the call's grpc-status is in these headers.
                self._observe_status(headers)
        # Should a backend send fields HTTP/2 forbids, they stop here.
        fields = [header for header in headers if header[0] not in HOP_BY_HOP]
        self.connection.send_headers(self, fields, end_stream=ended)

    def response_data(self, data: bytes, credit: int) -> None:
        self.settings.stats.bytes_out += len(data)
        self.connection.send_data(self, data, credit)

    def response_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self._observe_status(headers)
        self.connection.finish(self, trailers=headers)

    def response_end(self) -> None:
        self._release()
        self._give_back()
        if not self.out.end:
            if self.responded:
                self.connection.finish(self)
            else:
                self._observe(502)
                self._fail(UNAVAILABLE, "the backend ended the call without a response")

    def _response_sent(self, credit: int) -> None:
        upstream = self.upstream
        if upstream is None:
            return
        if self.paused:
            if self.connection.writing_paused or self.out.size >= SEND_LOW_WATER:
                if upstream.streams.get(self.upstream_id) is self:
                    # nghttp2 took these bytes, but only into a client connection whose socket
                    # is not draining: with a client's windows wide open, acknowledging them
                    # would let the backend fill the node's memory at the speed of its link.
                    self.withheld += credit
                    return
            else:
                # Drained while paused: the connection resumes only the streams it holds or
                # those already below the low-water mark when its socket drains, not one that
                # got there later.
                self.resume_backend()
        upstream.acknowledge(self.upstream_id, credit)

    def pause_backend(self) -> None:
        """The client connection's socket or this stream's Outbound is full: the backend gets no
        more window for the call until `resume_backend`, so its own flow control holds it."""
        self.paused = True

    def resume_backend(self) -> None:
        self.paused = False
        self._give_back()

    def _give_back(self) -> None:
        """Hand the withheld credit to the backend connection: on resuming, or once the backend
        can send nothing more on the stream, when it still counts against the connection's
        window, which the other calls share."""
        withheld = self.withheld
        if withheld:
            self.withheld = 0
            upstream = self.upstream
            if upstream is not None:
                upstream.acknowledge(self.upstream_id, withheld)

    def _drop_response(self) -> None:
        """The client takes no more of the response (its stream is closed, so nghttp2 pulls
        nothing more from `out`). The credit of what it never took goes back too: the backend
        connection's window, which the other calls share, would stay short of it for good."""
        out = self.out
        out.on_sent = None
        self.withheld += sum(credit for _, credit in out.chunks)
        self._give_back()

    # -- outcomes, for the passive health checks ------------------------------------------------

    def _observe(self, status: int) -> None:
        """Report the call's outcome, as an HTTP status, for the server it went to (once)."""
        if self.observed:
            return
        self.observed = True
        outlier = self.settings.route.outlier
        if outlier is not None and self.server is not None:
            outlier.observe(self.server, status)

    def _observe_status(self, headers: list[tuple[bytes, bytes]]) -> None:
        if self.observed or self.settings.route.outlier is None:
            return
        code = next((value for name, value in headers if name == b"grpc-status"), b"0")
        self._observe(FAILED_CALL.get(code.strip(), 200))

    # -- failures --------------------------------------------------------------------------------

    def refused(self) -> None:
        """The backend refused the stream before processing any of it (RFC 9113 8.7), as a
        server does past its concurrent-stream limit."""
        self.unprocessed("the backend refused the stream")

    def unprocessed(self, reason: str) -> None:
        """The backend processed none of the call: it refused the stream, or went away with the
        stream above its GOAWAY's last stream id (RFC 9113 6.8). The call goes again on a fresh
        stream to the same server, its body replayed, up to MAX_REFUSALS times: on the same
        connection while that takes new streams, else on a new one, whose failed connect moves
        the call on as any failed connect does. `reason` is what the client hears otherwise;
        none of this counts against the server's health."""
        backend = self.backend
        if backend is None or self.connection.streams.get(self.stream_id) is not self:
            self.upstream_failed(reason, failure=False)
            return
        if self.replay is None:
            # Not kept past REPLAY_LIMIT (or answered: then the client's stream is reset).
            self.upstream_failed(
                f"{reason}, and the request body is over {REPLAY_LIMIT} bytes: not sent again",
                failure=False,
            )
            return
        if self.refusals >= MAX_REFUSALS:
            self.upstream_failed(f"{reason} (sent {self.refusals + 1} times)", failure=False)
            return
        self.refusals += 1
        self._rewind()
        self.again = self.connection.loop.call_later(
            REFUSAL_BACKOFF * 2 ** (self.refusals - 1), self._send_again, backend
        )

    def _send_again(self, backend: Backend) -> None:
        self.again = None
        if self.backend is not backend or self.connection.streams.get(self.stream_id) is not self:
            return  # the call ended meanwhile
        upstream = self.upstream
        if upstream is not None and upstream.usable:
            self._attach(upstream)
        else:
            self.upstream = None
            self._reach(backend)

    def _rewind(self) -> None:
        """A new request Outbound holding the whole body so far, for a fresh stream."""
        old = self.request_out
        out = Outbound(on_sent=self._request_sent)
        if self.replay:
            out.add(bytes(self.replay))
        # What nghttp2 had not taken yet is in the replay too: its credit goes back now.
        for _, credit in old.chunks:
            if credit:
                self._request_sent(credit)
        out.end = old.end
        out.trailers = old.trailers
        self.request_out = out

    def upstream_failed(self, reason: str, *, failure: bool = True) -> None:
        """The backend stream or connection broke; `failure` is False when the node cut it
        (server states), which says nothing of the server's health."""
        self._release()
        self._give_back()
        if self.connection.streams.get(self.stream_id) is not self:
            return
        if failure and not self.responded:
            self._observe(502)  # before a response head, as the node's 502 for HTTP
        if self.responded:
            # Part of the response is out: the client must see the call break, not end.
            self.connection.reset(self, INTERNAL_ERROR)
            self._drop_response()
        else:
            self._fail(UNAVAILABLE, reason)

    def _late(self) -> None:
        self.timer = None
        if self.responded or self.connection.streams.get(self.stream_id) is not self:
            return
        self._stop_backend_stream()
        self._release()
        self._observe(504)  # the server that did not answer in time (dataplane.outlier)
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
        self._stop_backend_stream()
        self._release()
        self._drop_response()

    def _stop_backend_stream(self) -> None:
        """The call gives up its backend stream: reset it, or, while the call waits to be sent
        again (`again`), only stop waiting, as the refused stream is closed already."""
        if self.again is not None:
            self.again.cancel()
            self.again = None
        elif self.upstream is not None:
            self.upstream.reset(self.upstream_id)

    def _release(self) -> None:
        backend = self.backend
        if backend is not None:
            self.backend = None
            backend.active -= 1
