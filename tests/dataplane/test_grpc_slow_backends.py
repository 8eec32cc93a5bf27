"""Slow gRPC backends, through a real node: one that takes a call and never answers, one that
trickles its response a small DATA frame at a time, and one that stops reading while the client
streams a large request. The node ends the first with the listener's response timeout, relays the
second whole, and holds the third's client back by flow control with a bounded buffer. Each
leaves the node with the descriptors it had before the call.

The backends are h2 servers scripted by method (ScriptedBackend in test_grpc_backends); Say is
answered at once, to open the client's and the node's connections before the count starts."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import h2.connection
import pytest

from dataplane.protocols.grpc import REPLAY_LIMIT
from dataplane.protocols.h2 import STREAM_WINDOW
from tests.dataplane import test_grpc, test_grpc_backends
from tests.dataplane.conftest import wait_until
from tests.dataplane.test_grpc import SERVICE, grpc_group
from tests.dataplane.test_grpc_backends import ScriptedBackend

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


def open_fds() -> int:
    # The node runs in this process (tests/dataplane/conftest.py), its sockets with the test's.
    return len(os.listdir("/proc/self/fd"))


class SlowBackend(ScriptedBackend):
    """Say: answered at once. Hang: never answered (the connection is still read). Trickle: the
    response a few bytes per frame. Upload: the connection is not read any more, until the test
    ends."""

    def __init__(self, *, window: int | None = None) -> None:
        self.window = window
        self.uploads = 0
        super().__init__()

    def on_request(
        self, sock: socket.socket, conn: h2.connection.H2Connection, index: int, stream_id: int
    ) -> None:
        if self.path(index, stream_id) == f"/{SERVICE}/Upload".encode():
            self.uploads += 1
            sock.sendall(conn.data_to_send())
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
