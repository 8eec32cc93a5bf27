"""Slow and abandoned clients: what holds a node's sockets, and for how long.

Every client here misbehaves over a real socket against a real node (HTTP, HTTPS and TCP
listeners) in front of a backend that records each connection: a head that never ends, a body
that stops, an upload abandoned midway, a client that leaves while its response streams. Each
test asserts what the client got, the fate of the backend connection, and that the node's file
descriptors come back to where they started.

The node runs in this process (tests/dataplane/conftest.py), so /proc/self/fd counts its
sockets as well as the backend's; the flood and fd-exhaustion tests run `python -m dataplane` as
a process of its own and count /proc/<pid>/fd.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h2.errors
import pytest

from tests.dataplane import conftest as dataplane_fixtures
from tests.dataplane.conftest import (
    WAIT,
    certificate_entry,
    get,
    listener,
    read_until_closed,
    server_group,
    snapshot,
    unverified_client,
    wait_until,
)
from tests.dataplane.h2client import H2Client
from tests.dataplane.test_process import DataplaneProcess
from tests.fixtures.ports import free_port
from tests.security.raw_backend import RawBackend, RawConnection, Script, hold, trickle

# The dataplane tests' fixtures: a node and backends on a background loop, a test CA.
loop_thread = dataplane_fixtures.loop_thread
dataplane = dataplane_fixtures.dataplane
backends = dataplane_fixtures.backends
ca = dataplane_fixtures.ca

# Timeouts long enough that releasing a socket "at once" cannot be a timeout's doing.
LONG = {"idle_timeout": 60, "request_timeout": 60, "response_timeout": 60}
AT_ONCE = 5.0
UPLOAD_HEAD = b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n"
STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"


def open_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def close_wait(port: int) -> int:
    """Sockets on local `port` in CLOSE-WAIT: the peer closed, this side has not."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "08":
                    count += 1
    return count


@dataclass
class Front:
    """One listener of the node, in front of a raw backend."""

    protocol: str
    port: int
    backend: RawBackend

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=WAIT)
        if self.protocol in ("https", "tcp_ssl"):
            return unverified_client().wrap_socket(sock, server_hostname="www.example.com")
        return sock


@pytest.fixture
def front(dataplane, loop_thread, ca) -> Iterator[Callable[..., Front]]:
    started: list[RawBackend] = []

    def start(protocol: str, script: Script, **settings: object) -> Front:
        backend = RawBackend(loop_thread, script).start()
        started.append(backend)
        port = free_port()
        group = server_group(backend, protocol="tcp" if protocol.startswith("tcp") else "http")
        settings = {**LONG, **settings}
        certificates = []
        if protocol in ("https", "tcp_ssl"):
            settings["default_certificate_id"] = "cert-web"
            certificates = [certificate_entry("cert-web", ca.issue_cert("www.example.com"))]
        result = dataplane.apply(
            snapshot(
                [listener(port, protocol=protocol, **settings)],
                [group],
                certificates=certificates,
            )
        )
        assert result["lsn-web"]["status"] == "running", result
        return Front(protocol, port, backend)

    yield start
    for backend in started:
        backend.stop()


# -- a head that never ends --------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http", "https"])
def test_slow_head_gets_408_and_nothing_reaches_the_backend(front, protocol):
    site = front(protocol, hold, request_timeout=1)
    before = open_fds()
    with site.connect() as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Le")
        reply = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert site.backend.connections == []
    assert wait_until(lambda: open_fds() <= before), (open_fds(), before)


# -- a body that stops arriving ----------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http", "https"])
def test_stalled_body_gets_408_and_the_backend_connection_is_closed(front, protocol):
    """The request timeout bounds each pause between body bytes, as it bounds the head."""
    site = front(protocol, hold, request_timeout=1)
    before = open_fds()
    with site.connect() as sock:
        sock.sendall(UPLOAD_HEAD + b"0123456789")
        started = time.monotonic()
        reply = read_until_closed(sock)
        waited = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"Connection: close" in reply
    # No byte for one request timeout; found within two (one check per request timeout).
    assert 0.9 <= waited <= 4.0
    assert site.backend.all_closed()
    assert site.backend.requests[0].endswith(b"\r\n\r\n0123456789")
    assert wait_until(lambda: open_fds() <= before), (open_fds(), before)


@pytest.mark.parametrize("protocol", ["http", "https"])
def test_a_slow_but_steady_body_is_not_cut(front, protocol):
    def reply_after_body(expected: int) -> Script:
        async def script(connection) -> None:
            while len(connection.received.partition(b"\r\n\r\n")[2]) < expected:
                data = await connection.reader.read(65536)
                if not data:
                    return
                connection.received += data
            await connection.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

        return script

    site = front(protocol, reply_after_body(8), request_timeout=1)
    with site.connect() as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 8\r\n\r\n")
        # Four pauses of 0.6 s: 2.4 s in all, more than two request timeouts, none of them one.
        for piece in (b"ab", b"cd", b"ef", b"gh"):
            time.sleep(0.6)
            sock.sendall(piece)
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    assert reply.endswith(b"ok")
    assert site.backend.requests[0].endswith(b"\r\n\r\nabcdefgh")


# -- an upload abandoned midway ----------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http", "https", "tcp", "tcp_ssl"])
def test_upload_abandoned_midway_releases_both_sockets_at_once(front, protocol):
    site = front(protocol, hold)
    before = open_fds()
    sock = site.connect()
    sock.sendall(UPLOAD_HEAD + b"0123456789")
    assert wait_until(lambda: site.backend.requests and site.backend.requests[0].endswith(b"789"))
    sock.close()
    # Both sockets go well before any of the listener's 60 s timeouts.
    assert site.backend.all_closed(AT_ONCE)
    assert wait_until(lambda: close_wait(site.port) == 0, AT_ONCE)
    assert wait_until(lambda: open_fds() <= before, AT_ONCE), (open_fds(), before)


def test_half_closed_client_with_a_complete_request_still_gets_its_response(front):
    """A client may end its side once its request is sent (RFC 9112 9.6): that is no abort."""

    async def answer_body(connection) -> None:
        _, _, body = bytes(connection.received).partition(b"\r\n\r\n")
        while len(body) < 4:
            data = await connection.reader.read(65536)
            connection.received += data
            body += data
        await connection.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n" + body)

    site = front("http", answer_body)
    with site.connect() as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\ndata")
        sock.shutdown(socket.SHUT_WR)
        reply = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    assert reply.endswith(b"\r\n\r\ndata")


# -- a client leaving while its response streams -----------------------------------------------


@pytest.mark.parametrize("protocol", ["http", "https", "tcp", "tcp_ssl"])
def test_client_closing_during_the_response_releases_the_backend(front, protocol):
    site = front(protocol, trickle(STREAM_HEAD, b"5\r\nhello\r\n"))
    before = open_fds()
    sock = site.connect()
    sock.sendall(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
    first = sock.recv(65536)
    sock.close()
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert site.backend.all_closed(AT_ONCE)
    assert wait_until(lambda: open_fds() <= before, AT_ONCE), (open_fds(), before)


@pytest.mark.parametrize("protocol", ["http", "https"])
def test_client_that_stops_reading_its_response_is_cut(front, protocol):
    """A slow-read client: the response timeout bounds how long a streaming response may wait
    for the client to take any of it."""
    piece = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
    site = front(protocol, trickle(STREAM_HEAD, piece, interval=0), response_timeout=1)
    before = open_fds()
    with site.connect() as sock:
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        # Read nothing: buffers fill up on every hop, then nothing moves.
        assert site.backend.all_closed(WAIT)
    assert wait_until(lambda: open_fds() <= before), (open_fds(), before)


@pytest.mark.parametrize("protocol", ["http", "https"])
def test_backend_that_stalls_mid_response_is_cut(front, protocol):
    async def stall(connection) -> None:
        await connection.send(STREAM_HEAD + b"5\r\nhello\r\n")

    site = front(protocol, stall, response_timeout=1)
    before = open_fds()
    with site.connect() as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        started = time.monotonic()
        reply = read_until_closed(sock)
        waited = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    assert reply.endswith(b"5\r\nhello\r\n")  # cut: no last chunk, the client knows
    assert waited <= 4.5
    assert site.backend.all_closed()
    assert wait_until(lambda: open_fds() <= before), (open_fds(), before)


# -- HTTP/2 ------------------------------------------------------------------------------------


def test_http2_stream_reset_mid_upload_releases_its_backend_connection(front):
    site = front("https", hold, http2=True)
    with H2Client(site.port, unverified_client()) as client:
        assert client.alpn == "h2"
        stream = client.request(
            "POST", "/upload", headers=[("content-length", "100000")], end=False
        )
        client.send_body(stream, b"0123456789", end=False)
        assert wait_until(
            lambda: site.backend.requests and site.backend.requests[0].endswith(b"789")
        )
        client.conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
        client._send()
        assert site.backend.all_closed(AT_ONCE)
        # The connection itself is still good for the next stream.
        client.request("GET", "/after")
        assert wait_until(lambda: len(site.backend.connections) == 2)
        assert site.backend.requests[1].startswith(b"GET /after HTTP/1.1\r\n")


def test_http2_stalled_upload_gets_408(front):
    site = front("https", hold, http2=True, request_timeout=1)
    with H2Client(site.port, unverified_client()) as client:
        stream = client.request(
            "POST", "/upload", headers=[("content-length", "100000")], end=False
        )
        client.send_body(stream, b"0123456789", end=False)
        (response,) = client.wait(stream)
    assert response.status == 408
    assert site.backend.all_closed()


# -- a flood of abandoned uploads against a node process ---------------------------------------


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[Callable[[], DataplaneProcess]]:
    started: list[DataplaneProcess] = []

    def start() -> DataplaneProcess:
        process = DataplaneProcess(tmp_path, tmp_path / "state", drain_timeout=1)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


class Prober(threading.Thread):
    """Asks the node for a normal page every 50 ms while an attack runs."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.statuses: list[int | str] = []
        self.running = True

    def run(self) -> None:
        while self.running:
            try:
                self.statuses.append(get(self.port, "/probe")[0])
            except OSError as exc:
                self.statuses.append(type(exc).__name__)
            time.sleep(0.05)

    def stop(self) -> list[int | str]:
        self.running = False
        self.join(WAIT)
        return self.statuses


def abandon_uploads(port: int, count: int, deadline: float) -> int:
    """Start `count` uploads of 100 000 bytes, send 10 and close each; returns how many ran."""
    done = 0
    while done < count and time.monotonic() < deadline:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.sendall(UPLOAD_HEAD + b"0123456789")
        done += 1
    return done


async def hold_uploads(connection: RawConnection) -> None:
    """Answer a GET at once; hold anything else unanswered."""
    if connection.received.startswith(b"GET "):
        await connection.send(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        )
        connection.writer.close()


@pytest.mark.integration
def test_ten_thousand_abandoned_uploads_leave_no_socket_behind(node_process, loop_thread):
    backend = RawBackend(loop_thread, hold_uploads).start()
    node = node_process()
    port = free_port()
    status, ack = node.request(
        "PUT", "/v1/config", snapshot([listener(port, **LONG)], [server_group(backend)])
    )
    assert status == 200, ack
    pid = node.process.pid
    start = open_fds(pid)
    prober = Prober(port)
    prober.start()
    try:
        uploads = abandon_uploads(port, 10_000, time.monotonic() + 90)
        statuses = prober.stop()
        assert uploads == 10_000
        assert statuses and set(statuses) == {200}, statuses[-20:]
        # Every backend connection closed; the node back to its descriptors, and nothing left
        # in CLOSE-WAIT (an abandoned upload still in the accept queue counts too).
        assert backend.all_closed()
        assert wait_until(lambda: close_wait(port) == 0 and open_fds(pid) <= start), (
            open_fds(pid),
            start,
            close_wait(port),
        )
        assert node.request("GET", "/v1/status")[0] == 200
    finally:
        backend.stop()


@pytest.mark.integration
def test_node_out_of_file_descriptors_backs_off_and_recovers(node_process, loop_thread):
    """With its descriptor limit lowered to 256, a node flooded past it stops accepting on its
    listeners instead of spinning or logging per connection, keeps its control API answering,
    and serves HTTP again once the flood stops."""
    backend = RawBackend(loop_thread, hold_uploads).start()
    node = node_process()
    port = free_port()
    status, ack = node.request(
        "PUT", "/v1/config", snapshot([listener(port, **LONG)], [server_group(backend)])
    )
    assert status == 200, ack
    pid = node.process.pid
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (256, 256))
    start = open_fds(pid)
    flood: list[socket.socket] = []
    try:
        # Held uploads take a client socket and a backend socket each: 200 of them exhaust 256.
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
            sock.sendall(UPLOAD_HEAD + b"0123456789")
            flood.append(sock)
        # Out of descriptors: all 256 taken (or, with the reserve given back, nearly all).
        assert wait_until(lambda: open_fds(pid) >= 200)
        cpu_before = _cpu_seconds(pid)
        # More clients keep knocking for a second while there is no descriptor left.
        knocks_until = time.monotonic() + 1.0
        while time.monotonic() < knocks_until:
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                    sock.recv(100)
        busy = _cpu_seconds(pid) - cpu_before
        # Its listeners stopped accepting, so the control API still has descriptors to answer.
        assert node.request("GET", "/v1/status")[0] == 200
    finally:
        for sock in flood:
            sock.close()
    try:
        assert busy < 0.5, busy
        # Accepting again, it takes the clients that gave up while they waited and lets them go.
        assert wait_until(lambda: close_wait(port) == 0 and open_fds(pid) <= start), (
            open_fds(pid),
            start,
            close_wait(port),
        )
        assert node.request("GET", "/v1/status")[0] == 200
        assert get(port)[0] == 200
        # Said once per episode, not once per connection.
        complaints = [
            line
            for line in [*node.log, *node.lines.queue]
            if "open files" in line or "out of file descriptors" in line
        ]
        assert 1 <= len(complaints) <= 3, complaints
    finally:
        backend.stop()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
