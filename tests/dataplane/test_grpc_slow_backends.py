"""Slow gRPC backends, through a real node: one that takes a call and never answers, one that
trickles its response a small DATA frame at a time, and one that stops reading while the client
streams a large request. The node ends the first with the listener's response timeout, relays the
second whole, and holds the third's client back by flow control with a bounded buffer. Each
leaves the node with the descriptors it had before the call. Once the node gives up a connection
to a backend that stopped reading, it cuts it rather than wait for the backend to read.

The other way round, slow clients: one that offers huge windows and stops reading its socket, and
one that cancels calls whose response waits on the node. The first holds the backend back by
flow control with a bounded buffer, and gets the whole response once it reads again; the
second's calls give the backend connection its window back.

The slow backends are h2 servers scripted by method (ScriptedBackend in test_grpc_backends); Say
is answered at once, to open the client's and the node's connections before the count starts.
The slow clients are raw h2 clients in front of a grpcio backend (FloodServer)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame

from dataplane.protocols.grpc import REPLAY_LIMIT
from dataplane.protocols.h2 import CONNECTION_WINDOW, STREAM_WINDOW
from tests.dataplane import test_grpc, test_grpc_backends
from tests.dataplane.conftest import wait_until
from tests.dataplane.test_grpc import SERVICE, grpc_group
from tests.dataplane.test_grpc_backends import ScriptedBackend, framed
from tests.dataplane.test_https import trusting

grpc_listener = test_grpc.grpc_listener
scripted_backends = test_grpc_backends.scripted_backends

LISTENER = "lsn-tls"
# The listener's response timeout in these tests: the shortest the schema allows but one.
RESPONSE_TIMEOUT = 2
# The trickled response: the head after a pause within the timeout, then the message a few bytes
# per DATA frame, each gap far within the timeout and the whole longer than it.
HEAD_DELAY = RESPONSE_TIMEOUT / 4
TRICKLE_FRAME = 25
TRICKLE_GAP = 0.05
TRICKLE_MESSAGE = bytes(range(256)) * 6
# What one stream's request may hold on the node while its backend reads nothing: the client's
# DATA the node has not acknowledged (its stream window), as much again handed to the backend
# connection's transport by the one write that pauses it, the body kept for a replay, and the
# transport's high-water mark and frame headers.
BUFFER_BOUND = 2 * STREAM_WINDOW + REPLAY_LIMIT + 256 * 1024
UPLOAD_CHUNK = 64 * 1024
UPLOAD_CHUNKS = 1024  # 64 MiB offered, far beyond every window
# How soon the node's connection to a backend that reads nothing is gone once the node gives it
# up: it is cut, not left to a graceful close that would wait for the backend to read.
GIVE_UP_WAIT = 2.0


def open_fds() -> int:
    # The node runs in this process (tests/dataplane/conftest.py), its sockets with the test's.
    return len(os.listdir("/proc/self/fd"))


class SlowBackend(ScriptedBackend):
    """Say: answered at once. Hang: never answered (the connection is still read). Trickle: the
    response a few bytes per frame. Upload: the connection is not read any more, until the test
    ends. Abandon: as Upload, after a GOAWAY that still covers the call (so the node opens no new
    call on the connection, and closes it once this one is over)."""

    def __init__(self, *, window: int | None = None) -> None:
        self.window = window
        self.uploads = 0
        super().__init__()

    def on_request(
        self, sock: socket.socket, conn: h2.connection.H2Connection, index: int, stream_id: int
    ) -> None:
        method = self.path(index, stream_id).rsplit(b"/", 1)[1]
        if method in {b"Upload", b"Abandon"}:
            self.uploads += 1
            data = conn.data_to_send()
            if method == b"Abandon":
                # Written by hand: h2 would send nothing more after its own GOAWAY.
                frame = GoAwayFrame(0)
                frame.last_stream_id = stream_id
                data += frame.serialize()
            sock.sendall(data)
            self.release.wait(60)

    def on_end(
        self, sock: socket.socket, conn: h2.connection.H2Connection, index: int, stream_id: int
    ) -> None:
        method = self.path(index, stream_id).rsplit(b"/", 1)[1]
        if method == b"Hang":
            return
        if method == b"Trickle":
            time.sleep(HEAD_DELAY)
            self.answer(
                sock,
                conn,
                stream_id,
                [TRICKLE_MESSAGE],
                frame_size=TRICKLE_FRAME,
                pause=TRICKLE_GAP,
            )
            return
        super().on_end(sock, conn, index, stream_id)


@pytest.fixture
def slow(grpc_listener, scripted_backends) -> Callable[..., tuple[SlowBackend, grpc.Channel]]:
    def start(**options: object) -> tuple[SlowBackend, grpc.Channel]:
        backend = scripted_backends(SlowBackend(**options))
        channel = grpc_listener(grpc_group(ports=[backend.port]), response_timeout=RESPONSE_TIMEOUT)
        say = channel.unary_unary(f"/{SERVICE}/Say")
        assert say(b"warm", timeout=10) == b"got 4 bytes"
        return backend, channel

    return start


def settled(before: int) -> bool:
    """Whether the descriptors are back to `before` (closing is asynchronous on both ends)."""
    return wait_until(lambda: open_fds() <= before)


def test_a_backend_that_never_answers_ends_at_the_response_timeout(slow):
    backend, channel = slow()
    before = open_fds()
    hang = channel.unary_unary(f"/{SERVICE}/Hang")
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as error:
        hang(b"anyone there?", timeout=30)
    # The node's answer (grpc.py's DEADLINE_EXCEEDED), not the client's own deadline.
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "response timeout" in error.value.details()
    assert time.monotonic() - started >= RESPONSE_TIMEOUT * 0.9
    # The backend is told the call is over: its stream is cancelled (CANCEL, 0x8).
    (index, stream_id) = next(
        (index, stream_id)
        for index, streams in enumerate(backend.heads)
        for stream_id in streams
        if backend.path(index, stream_id).endswith(b"/Hang")
    )
    assert wait_until(lambda: (index, stream_id, 8) in backend.resets)
    # The connection stays usable.
    assert channel.unary_unary(f"/{SERVICE}/Say")(b"again", timeout=10) == b"got 5 bytes"
    assert settled(before), (open_fds(), before)


def test_a_backend_trickling_its_response_is_relayed_whole(slow):
    """The response timeout bounds the wait for the response head: a response whose DATA keeps
    coming, a few bytes at a time, completes however long it takes in all."""
    _, channel = slow()
    before = open_fds()
    trickle = channel.unary_unary(f"/{SERVICE}/Trickle")
    reply, call = trickle.with_call(b"slowly", timeout=60)
    assert reply == TRICKLE_MESSAGE
    assert call.code() == grpc.StatusCode.OK
    assert settled(before), (open_fds(), before)


@pytest.mark.parametrize(
    "window",
    [None, 64 << 20],
    ids=["default_window", "large_window_not_read"],
)
def test_a_backend_that_stops_reading_holds_the_client_back(slow, dataplane, loop_thread, window):
    """The backend stops reading as the client starts streaming 64 MiB. With h2's default window
    the node's sends stop at the window; with a 64 MiB window they stop when the socket is full.
    Either way the client is flow-controlled, and what the node buffers for the call stays under
    BUFFER_BOUND."""
    backend, channel = slow(window=window)
    before = open_fds()
    offered = [0]
    stop = threading.Event()

    def chunks() -> Iterator[bytes]:
        for n in range(UPLOAD_CHUNKS):
            if stop.is_set():
                return
            offered[0] = n + 1
            yield bytes([n % 256]) * UPLOAD_CHUNK

    def buffered() -> int | None:
        """What the node holds of the call's request (None while it has no such call)."""

        def measure() -> int | None:
            total = None
            for connection in dataplane.node.listeners[LISTENER].connections:
                for stream in connection.streams.values():
                    out = getattr(stream, "request_out", None)
                    if out is not None:
                        total = (total or 0) + out.size + len(stream.replay or b"")
                for upstream in connection.upstreams.values():
                    if upstream.transport is not None and total is not None:
                        total += upstream.transport.get_write_buffer_size()
            return total

        return loop_thread.call(measure)

    upload = channel.stream_unary(f"/{SERVICE}/Upload")
    call = upload.future(chunks(), timeout=60)
    try:
        assert wait_until(lambda: backend.uploads == 1)
        # Sampled until the client has stopped offering for a second: it is held back.
        peak, last, still_since = 0, -1, time.monotonic()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            peak = max(peak, buffered() or 0)
            if offered[0] != last:
                last, still_since = offered[0], time.monotonic()
            elif time.monotonic() - still_since > 1.0:
                break
            time.sleep(0.02)
        assert offered[0] < UPLOAD_CHUNKS, "the client was never held back"
        assert not call.done()
        assert 0 < peak <= BUFFER_BOUND, (peak, BUFFER_BOUND)
    finally:
        stop.set()
        call.cancel()
    # The call is gone from the node.
    assert wait_until(lambda: buffered() is None)
    assert settled(before), (open_fds(), before)


def node_socket(fd: int) -> str | None:
    """What descriptor `fd` of this process (the node's, among others) is now: "socket:[inode]"
    for a socket, None once closed."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except FileNotFoundError:
        return None


@pytest.mark.parametrize("given_up", ["abandoned_by_goaway", "client_gone"])
def test_a_connection_to_a_backend_that_stops_reading_is_cut_once_given_up(
    slow, dataplane, loop_thread, given_up
):
    """The backend offers a 64 MiB window, stops reading as the client streams its request, and
    never answers: the node's writes to it are stuck in its transport, and the call ends at the
    response timeout. The node then gives the connection up: at once when the backend had gone
    away (GOAWAY) so the call was its last, or when the client's connection closes. Either way
    its descriptor is gone within GIVE_UP_WAIT, although the backend still holds its end."""
    backend, channel = slow(window=64 << 20)

    def upstream() -> tuple[int, int]:
        """The node's connection to the backend: its descriptor, and the bytes its transport
        holds that the kernel has not taken."""
        (connection,) = dataplane.node.listeners[LISTENER].connections
        # Found through the call too: once abandoned, the client connection no longer lists it.
        upstreams = [stream.upstream for stream in connection.streams.values()]
        (node_side,) = {u for u in upstreams if u is not None} or connection.upstreams.values()
        transport = node_side.transport
        return transport.get_extra_info("socket").fileno(), transport.get_write_buffer_size()

    fd, _ = loop_thread.call(upstream)
    socket_name = node_socket(fd)
    assert socket_name is not None and socket_name.startswith("socket:")
    before = open_fds()

    method = "Abandon" if given_up == "abandoned_by_goaway" else "Upload"
    upload = channel.stream_unary(f"/{SERVICE}/{method}")
    chunks = (bytes([n % 256]) * UPLOAD_CHUNK for n in range(UPLOAD_CHUNKS))
    call = upload.future(chunks, timeout=30)
    assert wait_until(lambda: backend.uploads == 1)
    # The backend's socket is full: the node holds bytes it cannot send.
    assert wait_until(lambda: loop_thread.call(upstream)[1] > 0, timeout=RESPONSE_TIMEOUT)
    with pytest.raises(grpc.RpcError) as error:
        call.result()
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "response timeout" in error.value.details()
    if given_up == "client_gone":
        # Still the connection for the client's next call to this server.
        assert node_socket(fd) == socket_name
        channel.close()
    assert wait_until(lambda: node_socket(fd) != socket_name, timeout=GIVE_UP_WAIT)
    # The backend's own end is still open (it is not reading): one descriptor fewer, the node's.
    assert wait_until(lambda: open_fds() < before, timeout=GIVE_UP_WAIT), (open_fds(), before)
    assert not backend.closed[0].is_set()


# -- a client that stops reading -----------------------------------------------------------------

# The flood: a server-streaming call whose response is far beyond the kernel's socket buffers on
# both hops, so that what the client does not read must wait somewhere.
FLOOD_MESSAGE = 256 * 1024
FLOOD_MESSAGES = 256  # 64 MiB
# What the greedy client offers: its stream and connection windows never close the node's sends.
HUGE_WINDOW = 1 << 30
# HTTP/2 frame headers and TLS records around the bytes counted below: 9 and some 25 bytes per
# 16 KiB, rounded far up.
FRAMING = 64 * 1024


def flood_message(n: int) -> bytes:
    """Message n of a flood: its own number, repeated, so a lost or reordered piece shows."""
    return n.to_bytes(4, "big") * (FLOOD_MESSAGE // 4)


class FloodServer:
    """A grpcio server whose Flood method streams as many messages as its request names, and
    counts how many gRPC has taken from it (it takes the next once the last is on its way)."""

    def __init__(self) -> None:
        self.sent = 0
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        handlers = {"Flood": grpc.unary_stream_rpc_method_handler(self.flood)}
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def flood(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for n in range(int(request)):
            yield flood_message(n)
            self.sent = n + 1

    def stop(self) -> None:
        self.server.stop(0)


@pytest.fixture
def flood_server() -> Iterator[FloodServer]:
    server = FloodServer()
    yield server
    server.stop()


@dataclasses.dataclass
class Call:
    """What a GreedyClient received for one call."""

    headers: list[tuple[bytes, bytes]] = dataclasses.field(default_factory=list)
    body: bytearray = dataclasses.field(default_factory=bytearray)
    trailers: list[tuple[bytes, bytes]] = dataclasses.field(default_factory=list)
    ended: bool = False
    reset: int | None = None

    def messages(self) -> list[bytes]:
        found, view = [], memoryview(self.body)
        while view:
            size = int.from_bytes(view[1:5], "big")
            found.append(bytes(view[5 : 5 + size]))
            view = view[5 + size :]
        return found


class GreedyClient:
    """A raw HTTP/2 client (the h2 package over TLS) that opens a connection window of
    HUGE_WINDOW, and stream windows as large unless told otherwise; it makes calls and reads
    nothing until told to."""

    def __init__(
        self, port: int, context: ssl.SSLContext, *, stream_window: int = HUGE_WINDOW
    ) -> None:
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock = context.wrap_socket(raw, server_hostname="grpc.example.com")
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.initiate_connection()
        self.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: stream_window})
        self.conn.increment_flow_control_window(HUGE_WINDOW - 65535)
        self.sock.sendall(self.conn.data_to_send())
        self.calls: dict[int, Call] = {}
        # The node has applied the windows once it acknowledged them: from then on, only the
        # socket can hold its sends back.
        acknowledged = False
        while not acknowledged:
            acknowledged = any(
                isinstance(event, h2.events.SettingsAcknowledged) for event in self._read()
            )

    def call(self, method: str, message: bytes) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            stream_id,
            [
                (b":method", b"POST"),
                (b":scheme", b"https"),
                (b":authority", b"grpc.example.com"),
                (b":path", f"/{SERVICE}/{method}".encode()),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
            ],
        )
        self.conn.send_data(stream_id, framed(message), end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        self.calls[stream_id] = Call()
        return stream_id

    def cancel(self, stream_id: int) -> None:
        self.conn.reset_stream(stream_id, 8)  # CANCEL, as a gRPC client cancels a call
        self.sock.sendall(self.conn.data_to_send())

    def _read(self) -> list[h2.events.Event]:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("the node closed the connection")
        events = self.conn.receive_data(data)
        for event in events:
            call = self.calls.get(getattr(event, "stream_id", 0))
            if call is None:
                continue
            if isinstance(event, h2.events.ResponseReceived):
                call.headers = event.headers
            elif isinstance(event, h2.events.DataReceived):
                call.body += event.data
                # Frames for a call this client cancelled are the connection's alone to count.
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
            elif isinstance(event, h2.events.TrailersReceived):
                call.trailers = event.headers
            elif isinstance(event, h2.events.StreamEnded):
                call.ended = True
            elif isinstance(event, h2.events.StreamReset):
                call.reset = event.error_code
        pending = self.conn.data_to_send()
        if pending:
            self.sock.sendall(pending)
        return events

    def read_response(self, stream_id: int) -> Call:
        """Read on until the call ends."""
        call = self.calls[stream_id]
        while not call.ended and call.reset is None:
            self._read()
        return call

    def close(self) -> None:
        with contextlib.suppress(OSError, h2.exceptions.ProtocolError):
            self.conn.close_connection()
            self.sock.sendall(self.conn.data_to_send())
        self.sock.close()


def test_a_client_that_stops_reading_holds_its_backend_back(
    grpc_listener, flood_server, dataplane, loop_thread, ca
):
    """A client offers windows of 1 GiB, starts a 64 MiB server-streaming call and reads
    nothing: only its socket holds the node's sends back. The node stops acknowledging the
    backend's DATA while the client's connection is paused, so the backend's window holds it
    back, and what the node buffers for the connection stays bounded; once the client reads
    again, the whole response arrives intact."""
    channel = grpc_listener(grpc_group(ports=[flood_server.port]))
    port = int(channel._channel.target().decode().rsplit(":", 1)[1])
    before = open_fds()

    def measure() -> tuple[int, bool, int]:
        """What the node holds for its client connections (their Outbounds and the bytes
        their transports have not passed to the kernel), whether their writing is paused, and
        the transports' high-water mark."""
        held, paused, high = 0, False, 0
        for connection in dataplane.node.listeners[LISTENER].connections:
            held += connection.transport.get_write_buffer_size()
            held += sum(stream.out.size for stream in connection.streams.values())
            paused = paused or connection.writing_paused
            high = max(high, connection.transport.get_write_buffer_limits()[1])
        return held, paused, high

    client = GreedyClient(port, trusting(ca))
    try:
        stream_id = client.call("Flood", b"%d" % FLOOD_MESSAGES)
        # Sampled until the backend has taken no step for a second: it is held back.
        peak, last, still_since = 0, -1, time.monotonic()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            held, paused, high = loop_thread.call(measure)
            peak = max(peak, held)
            if flood_server.sent != last:
                last, still_since = flood_server.sent, time.monotonic()
            elif time.monotonic() - still_since > 1.0:
                break
            time.sleep(0.02)
        assert flood_server.sent < FLOOD_MESSAGES, "the backend was never held back"
        assert paused, "the client's socket never filled"
        # The transport's buffer up to its high-water mark, one write past it (at most what the
        # stream's Outbound held: the backend's stream window), and what the backend may send
        # once the node stops acknowledging (its stream window again).
        bound = high + 2 * STREAM_WINDOW + FRAMING
        assert 0 < peak <= bound, (peak, bound)

        call = client.read_response(stream_id)
        assert call.reset is None
        assert dict(call.headers)[b":status"] == b"200"
        assert dict(call.trailers)[b"grpc-status"] == b"0"
        messages = call.messages()
        assert len(messages) == FLOOD_MESSAGES
        assert all(message == flood_message(n) for n, message in enumerate(messages))
    finally:
        client.close()
    assert settled(before), (open_fds(), before)


def test_calls_cancelled_with_their_response_held_give_the_backend_its_window_back(
    grpc_listener, flood_server, dataplane, loop_thread, ca
):
    """A client with h2's default stream window starts server-streaming calls and cancels each
    once the node holds most of a stream window of its response, which the client will never
    take. Those bytes still count against the window of the node's connection to the backend,
    which the client connection's calls to that server share, until the node gives their credit
    back: after more such calls than that window holds, a call still gets its whole response."""
    channel = grpc_listener(grpc_group(ports=[flood_server.port]))
    port = int(channel._channel.target().decode().rsplit(":", 1)[1])
    before = open_fds()
    # What each cancelled call leaves on the node, at least, and so enough calls to have spent
    # the backend connection's window twice over were nothing given back.
    stranded = STREAM_WINDOW - 2 * 65535
    cancelled = 2 * CONNECTION_WINDOW // stranded + 1

    def held(stream_id: int) -> int:
        def measure() -> int:
            (connection,) = dataplane.node.listeners[LISTENER].connections
            stream = connection.streams.get(stream_id)
            return 0 if stream is None else stream.out.size

        return loop_thread.call(measure)

    client = GreedyClient(port, trusting(ca), stream_window=65535)
    try:
        for _ in range(cancelled):
            stream_id = client.call("Flood", b"%d" % FLOOD_MESSAGES)
            assert wait_until(lambda sid=stream_id: held(sid) >= stranded), held(stream_id)
            client.cancel(stream_id)
        stream_id = client.call("Flood", b"8")
        call = client.read_response(stream_id)
        assert dict(call.trailers)[b"grpc-status"] == b"0"
        assert call.messages() == [flood_message(n) for n in range(8)]
    finally:
        client.close()
    assert settled(before), (open_fds(), before)
