"""gRPC backends reached over nghttp2's client side: a backend that limits its concurrent streams,
and backends that break HTTP/2 in each way a call can see (a reset stream, an oversized response
head, GOAWAY, garbage, a close mid-call). Each broken call fails as UNAVAILABLE with the reason,
the next call on the same client channel still works, and the node keeps no descriptor.

A backend going away (GOAWAY) did not process the streams above its last stream id (RFC 9113
6.8): those calls go again, body and all, on a fresh connection, while the ones it took finish on
the old one."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame

from dataplane.protocols.grpc import MAX_REFUSALS, REFUSAL_BACKOFF, REPLAY_LIMIT
from tests.dataplane import test_grpc
from tests.dataplane.conftest import wait_until
from tests.dataplane.test_grpc import SERVICE, EchoServer, grpc_group
from tests.fixtures.ports import free_port

grpc_listener = test_grpc.grpc_listener


def open_fds() -> int:
    # The node runs in this process (tests/dataplane/conftest.py), its sockets with the test's.
    return len(os.listdir("/proc/self/fd"))


class BrokenBackend:
    """A cleartext HTTP/2 server (the h2 package) that answers every call the way `mode` says."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.calls = 0
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        try:
            while data := sock.recv(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        self.calls += 1
                        if self._answer(sock, conn, event.stream_id):
                            return
                sock.sendall(conn.data_to_send())
        except OSError:
            return
        finally:
            sock.close()

    def _answer(
        self, sock: socket.socket, conn: h2.connection.H2Connection, stream_id: int
    ) -> bool:
        """Answer one call; True when the connection is to end here."""
        if self.mode == "reset":
            conn.reset_stream(stream_id, 2)
        elif self.mode == "huge_head":
            conn.send_headers(
                stream_id,
                [(b":status", b"200"), (b"content-type", b"application/grpc")]
                + [(b"x-filler-%d" % n, b"v" * 4000) for n in range(40)],
            )
        elif self.mode == "goaway":
            conn.close_connection(last_stream_id=0)
        elif self.mode == "garbage":
            sock.sendall(b"\x00\x00\x04\x99\x00\x00\x00\x00\x01garbage that is not a frame")
        elif self.mode == "close_mid_call":
            conn.send_headers(
                stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")]
            )
            conn.send_data(stream_id, b"\x00\x00\x00\x00\x05hel")
        sock.sendall(conn.data_to_send())
        if self.mode in {"goaway", "garbage", "close_mid_call"}:
            sock.shutdown(socket.SHUT_RDWR)
            return True
        return False

    def stop(self) -> None:
        self.listener.close()
        for sock in self.connections:
            try:
                sock.close()
            except OSError:
                pass


@pytest.fixture
def broken_backends():
    started: list[BrokenBackend] = []

    def start(mode: str) -> BrokenBackend:
        backend = BrokenBackend(mode)
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.stop()


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("reset", "reset the stream"),
        ("huge_head", "reset the stream"),
        ("goaway", "going away"),
        ("garbage", "closed the connection"),
        ("close_mid_call", "closed the connection"),
    ],
)
def test_a_backend_breaking_http2_fails_the_call_and_leaves_nothing_behind(
    grpc_listener, broken_backends, mode, reason
):
    backend = broken_backends(mode)
    channel = grpc_listener(grpc_group(ports=[backend.port]))
    say = channel.unary_unary(f"/{SERVICE}/Say")
    with pytest.raises(grpc.RpcError):
        say(b"first", timeout=10)  # opens the client's connection to the node
    before = open_fds()
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as error:
            say(b"x", timeout=10)
        if mode == "close_mid_call":
            # Part of the response had gone out: the client sees the call break, not end.
            assert error.value.code() in {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE}
        else:
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
            assert reason in error.value.details()
    assert backend.calls >= 4
    # Every connection the node opened to the broken backend is closed again.
    assert wait_until(lambda: open_fds() <= before, timeout=10), (open_fds(), before)


def test_calls_beyond_the_backends_stream_limit_wait_for_a_free_stream(grpc_listener):
    """The backend allows two concurrent streams; forty calls at once on one client connection
    all succeed, nghttp2 holding each HEADERS until a stream closes."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.max_concurrent_streams", 2)]
    )
    echo = EchoServer.__new__(EchoServer)
    echo.name, echo.metadata, echo.server = "limited", [], server
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE, {"Say": grpc.unary_unary_rpc_method_handler(echo.say)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        channel = grpc_listener(grpc_group(ports=[port]))
        say = channel.unary_unary(f"/{SERVICE}/Say")
        calls = [say.future(b"%d" % n, timeout=30) for n in range(40)]
        assert sorted(call.result() for call in calls) == sorted(
            b"limited: %d" % n for n in range(40)
        )
        assert len(echo.metadata) == 40
    finally:
        server.stop(0)


def test_a_backend_that_is_no_http2_server_at_all(grpc_listener):
    """An HTTP/1.1 server where a gRPC one was configured: the call fails as UNAVAILABLE."""
    port = free_port()
    listener = socket.create_server(("127.0.0.1", port))

    def answer() -> None:
        sock, _ = listener.accept()
        sock.recv(65536)
        sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        sock.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        channel = grpc_listener(grpc_group(ports=[port]))
        say = channel.unary_unary(f"/{SERVICE}/Say")
        with pytest.raises(grpc.RpcError) as error:
            say(b"x", timeout=10)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        listener.close()
        thread.join(5)


# -- scripted backends -----------------------------------------------------------------------------


def framed(message: bytes) -> bytes:
    """A gRPC message on the wire: uncompressed, length-prefixed."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


class ScriptedBackend:
    """A cleartext HTTP/2 gRPC server (the h2 package), a thread per connection, that records what
    each connection received: request heads and bodies by stream, and the streams the node reset.
    By default it answers a call once its request has ended, with the size of its message;
    subclasses script other behaviour in `on_request`, `on_body` and `on_end`."""

    # The receive window it offers for each stream and for the connection (h2's 65,535 if None).
    window: int | None = None

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        # One entry per connection, in the order the node opened them.
        self.sockets: list[socket.socket] = []
        self.heads: list[dict[int, dict[bytes, bytes]]] = []
        self.bodies: list[dict[int, bytearray]] = []
        self.closed: list[threading.Event] = []
        # (connection, stream, error code) of each RST_STREAM the node sent.
        self.resets: list[tuple[int, int, int]] = []
        # Set when the test ends: frees a script that stopped reading.
        self.release = threading.Event()
        self.threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            index = len(self.sockets)
            self.heads.append({})
            self.bodies.append({})
            self.closed.append(threading.Event())
            self.sockets.append(sock)
            thread = threading.Thread(target=self._serve, args=(sock, index), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket, index: int) -> None:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        conn.initiate_connection()
        if self.window is not None:
            conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: self.window})
            conn.increment_flow_control_window(self.window - 65535)
        try:
            sock.sendall(conn.data_to_send())
            while data := sock.recv(65536):
                for event in conn.receive_data(data):
                    self._event(sock, conn, index, event)
                sock.sendall(conn.data_to_send())
        except (OSError, h2.exceptions.ProtocolError):
            pass
        finally:
            sock.close()
            self.closed[index].set()

    def _event(
        self, sock: socket.socket, conn: h2.connection.H2Connection, index: int, event: object
    ) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self.heads[index][event.stream_id] = dict(event.headers)
            self.bodies[index][event.stream_id] = bytearray()
            self.on_request(sock, conn, index, event.stream_id)
        elif isinstance(event, h2.events.DataReceived):
            body = self.bodies[index][event.stream_id]
            body += event.data
            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            self.on_body(sock, conn, index, event.stream_id, body)
        elif isinstance(event, h2.events.StreamEnded):
            self.on_end(sock, conn, index, event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self.resets.append((index, event.stream_id, event.error_code))

    def path(self, index: int, stream_id: int) -> bytes:
        return self.heads[index][stream_id][b":path"]

    def on_request(
        self, sock: socket.socket, conn: h2.connection.H2Connection, index: int, stream_id: int
    ) -> None:
        pass

    def on_body(
        self,
        sock: socket.socket,
        conn: h2.connection.H2Connection,
        index: int,
        stream_id: int,
        body: bytearray,
    ) -> None:
        pass

    def on_end(
        self, sock: socket.socket, conn: h2.connection.H2Connection, index: int, stream_id: int
    ) -> None:
        size = len(self.bodies[index][stream_id]) - 5
        self.answer(sock, conn, stream_id, [b"got %d bytes" % size])

    @staticmethod
    def answer(
        sock: socket.socket,
        conn: h2.connection.H2Connection,
        stream_id: int,
        messages: list[bytes],
        *,
        frame_size: int = 0,
        pause: float = 0.0,
    ) -> None:
        """A complete response: head, `messages` in DATA frames of `frame_size` bytes at most
        (h2's largest when 0), `pause` seconds apart, then the OK trailers."""
        conn.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")])
        sock.sendall(conn.data_to_send())
        data = b"".join(framed(message) for message in messages)
        size = frame_size or conn.max_outbound_frame_size
        for start in range(0, len(data), size):
            if pause:
                time.sleep(pause)
            conn.send_data(stream_id, data[start : start + size])
            sock.sendall(conn.data_to_send())
        conn.send_headers(stream_id, [(b"grpc-status", b"0")], end_stream=True)
        sock.sendall(conn.data_to_send())

    def stop(self) -> None:
        self.release.set()
        self.listener.close()
        for sock in self.sockets:
            # Wakes the connection's thread, which closes its socket itself.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self.threads:
            thread.join(5)


class GoingAwayBackend(ScriptedBackend):
    """Goes away on its first connection: a GOAWAY naming `last_stream_id`, sent once more than
    `after` bytes of the first call's body arrived (at its HEADERS when `after` is 0). It goes on
    reading that connection, and answers the calls the GOAWAY covers; every later connection
    answers normally."""

    def __init__(
        self, *, last_stream_id: int = 0, after: int = 0, window: int | None = None
    ) -> None:
        self.last_stream_id = last_stream_id
        self.after = after
        self.window = window
        self.gone = False
        super().__init__()

    def on_request(
        self, sock: socket.socket, conn: h2.connection.H2Connection, index: int, stream_id: int
    ) -> None:
        if index == 0 and not self.after:
            self._go_away(sock, conn)

    def on_body(
        self,
        sock: socket.socket,
        conn: h2.connection.H2Connection,
        index: int,
        stream_id: int,
        body: bytearray,
    ) -> None:
        if index == 0 and self.after and len(body) > self.after:
            self._go_away(sock, conn)

    def on_end(
        self, sock: socket.socket, conn: h2.connection.H2Connection, index: int, stream_id: int
    ) -> None:
        if index == 0 and stream_id > self.last_stream_id:
            return  # not processed, as the GOAWAY said
        super().on_end(sock, conn, index, stream_id)

    def _go_away(self, sock: socket.socket, conn: h2.connection.H2Connection) -> None:
        if self.gone:
            return
        self.gone = True
        # Written by hand: h2 would send nothing more after its own GOAWAY, and this backend
        # still answers the calls at or below last_stream_id.
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.last_stream_id
        sock.sendall(conn.data_to_send() + frame.serialize())


@pytest.fixture
def scripted_backends():
    started: list[ScriptedBackend] = []

    def start(backend: ScriptedBackend) -> ScriptedBackend:
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.stop()


def test_calls_a_backend_going_away_did_not_process_go_again_on_a_fresh_connection(
    grpc_listener, scripted_backends
):
    """GOAWAY(last_stream_id=0) as the first call's HEADERS arrive: the call is sent again on a
    second connection, its whole body with it, and succeeds; the node closes the first one."""
    backend = scripted_backends(GoingAwayBackend(last_stream_id=0))
    channel = grpc_listener(grpc_group(ports=[backend.port]))
    say = channel.unary_unary(f"/{SERVICE}/Say")
    message = bytes(range(256)) * 200  # 51,200 bytes: several DATA frames, under REPLAY_LIMIT
    assert say(message, timeout=10) == b"got %d bytes" % len(message)

    assert len(backend.sockets) == 2
    (stream_id,) = backend.heads[1]
    assert backend.bodies[1][stream_id] == framed(message)
    assert backend.heads[1][stream_id][b":path"] == f"/{SERVICE}/Say".encode()
    # Whatever of the body reached the first connection was never answered there.
    assert framed(message).startswith(bytes(backend.bodies[0][1]))
    assert backend.closed[0].wait(10)


def test_a_call_over_the_replay_limit_fails_when_its_backend_goes_away(
    grpc_listener, scripted_backends
):
    """The backend goes away once more than REPLAY_LIMIT bytes of the body reached it, so the
    node kept none of it to send again: the call fails as UNAVAILABLE, saying why."""
    backend = scripted_backends(
        GoingAwayBackend(last_stream_id=0, after=REPLAY_LIMIT, window=1 << 20)
    )
    channel = grpc_listener(grpc_group(ports=[backend.port]))
    say = channel.unary_unary(f"/{SERVICE}/Say")
    with pytest.raises(grpc.RpcError) as error:
        say(b"x" * (2 * REPLAY_LIMIT), timeout=10)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "going away" in error.value.details()
    assert "not sent again" in error.value.details()
    assert len(backend.sockets) == 1
    assert backend.closed[0].wait(10)


class RefusingBackend(ScriptedBackend):
    """Refuses its first `refusals` streams unprocessed (RST_STREAM REFUSED_STREAM, RFC 9113 8.7)
    and answers the rest; records when each stream's HEADERS arrived."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.arrivals: list[float] = []
        self.refused: set[tuple[int, int]] = set()
        super().__init__()

    def on_request(
        self, sock: socket.socket, conn: h2.connection.H2Connection, index: int, stream_id: int
    ) -> None:
        self.arrivals.append(time.monotonic())
        if len(self.arrivals) <= self.refusals:
            self.refused.add((index, stream_id))
            conn.reset_stream(stream_id, error_code=ErrorCodes.REFUSED_STREAM)

    def on_end(
        self, sock: socket.socket, conn: h2.connection.H2Connection, index: int, stream_id: int
    ) -> None:
        if (index, stream_id) not in self.refused:
            super().on_end(sock, conn, index, stream_id)


def test_a_refused_call_goes_again_after_a_growing_wait_and_succeeds(
    grpc_listener, scripted_backends
):
    """A backend frees a stream slot only once it has finished a stream on its own side, so each
    attempt after a refusal waits twice as long as the last (REFUSAL_BACKOFF): the call gets
    through on the same connection once the backend takes it."""
    backend = scripted_backends(RefusingBackend(refusals=MAX_REFUSALS))
    channel = grpc_listener(grpc_group(ports=[backend.port]))
    say = channel.unary_unary(f"/{SERVICE}/Say")
    assert say(b"hello", timeout=10) == b"got 5 bytes"
    assert len(backend.arrivals) == MAX_REFUSALS + 1
    assert len(backend.sockets) == 1
    # The node's own timers set these lower bounds (uvloop may fire one a millisecond early).
    arrivals = backend.arrivals
    gaps = [arrivals[n + 1] - arrivals[n] for n in range(len(arrivals) - 1)]
    assert REFUSAL_BACKOFF == 0.005
    for gap, least in zip(gaps, (0.005, 0.010, 0.020), strict=True):
        assert gap >= least - 0.002, gaps


def test_a_call_refused_every_time_fails_unavailable_saying_how_often_it_was_sent(
    grpc_listener, scripted_backends
):
    backend = scripted_backends(RefusingBackend(refusals=1000))
    channel = grpc_listener(grpc_group(ports=[backend.port]))
    say = channel.unary_unary(f"/{SERVICE}/Say")
    with pytest.raises(grpc.RpcError) as error:
        say(b"hello", timeout=10)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    sent = MAX_REFUSALS + 1
    assert error.value.details() == f"the backend refused the stream (sent {sent} times)"
    assert len(backend.arrivals) == MAX_REFUSALS + 1
    # The next call on the same client channel is served the same way, not stuck.
    with pytest.raises(grpc.RpcError):
        say(b"again", timeout=10)
    assert len(backend.arrivals) == 2 * (MAX_REFUSALS + 1)


def test_calls_a_backend_going_away_took_finish_on_its_connection(grpc_listener, scripted_backends):
    """GOAWAY naming the call's own stream: the backend processes it, and the call ends on that
    connection; the node then closes it, and the next call opens a fresh one."""
    backend = scripted_backends(GoingAwayBackend(last_stream_id=1))
    channel = grpc_listener(grpc_group(ports=[backend.port]))
    say = channel.unary_unary(f"/{SERVICE}/Say")
    assert say(b"first", timeout=10) == b"got 5 bytes"
    assert list(backend.heads[0]) == [1]
    # The backend keeps its end open: the node closes the connection it may not use again.
    assert backend.closed[0].wait(10)

    assert say(b"second", timeout=10) == b"got 6 bytes"
    assert len(backend.sockets) == 2
    assert backend.bodies[1][1] == framed(b"second")


def test_a_call_a_backend_going_away_took_sends_the_rest_of_its_body(
    grpc_listener, scripted_backends
):
    """GOAWAY naming the call's own stream, sent once REPLAY_LIMIT bytes of its body arrived:
    the backend processes the call, so the rest of the body, which the client sends only once
    the backend has gone away and which is many times the backend's windows, follows on that
    connection, and the call succeeds there; the node then closes the connection."""
    backend = scripted_backends(GoingAwayBackend(last_stream_id=1, after=REPLAY_LIMIT))
    channel = grpc_listener(grpc_group(ports=[backend.port]))
    first, rest = b"a" * (2 * REPLAY_LIMIT), bytes(range(256)) * (8 << 10)  # then 2 MiB

    def messages() -> Iterator[bytes]:
        yield first
        assert wait_until(lambda: backend.gone)
        yield rest

    upload = channel.stream_unary(f"/{SERVICE}/Upload")
    body = framed(first) + framed(rest)
    assert upload(messages(), timeout=10) == b"got %d bytes" % (len(body) - 5)
    assert len(backend.sockets) == 1
    assert backend.bodies[0][1] == body
    assert backend.closed[0].wait(10)
