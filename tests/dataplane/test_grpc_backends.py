"""gRPC backends reached over nghttp2's client side: a backend that limits its concurrent streams,
and backends that break HTTP/2 in each way a call can see (a reset stream, an oversized response
head, GOAWAY, garbage, a close mid-call). Each broken call fails as UNAVAILABLE with the reason,
the next call on the same client channel still works, and the node keeps no descriptor."""

from __future__ import annotations

import os
import socket
import threading
from concurrent import futures

import grpc
import h2.config
import h2.connection
import h2.events
import pytest

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
