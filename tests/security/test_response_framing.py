"""Response framing: a backend that frames its answer badly, ambiguously or enormously.

A raw backend (tests/security/raw_backend.py) answers with exact bytes; the test asserts what a
real client of a real node got, and the fate of the backend connection: closed, or kept for the
next request. A response the node cannot frame exactly must never reach the next request on a
pooled connection (response splitting).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator

import pytest

from tests.dataplane import conftest as dataplane_fixtures
from tests.dataplane.conftest import (
    WAIT,
    listener,
    server_group,
    snapshot,
    wait_until,
)
from tests.fixtures.ports import free_port
from tests.security.raw_backend import RawBackend, RawConnection, Script, answer

# The dataplane tests' fixtures: a node and backends on a background loop.
loop_thread = dataplane_fixtures.loop_thread
dataplane = dataplane_fixtures.dataplane

GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
def site(dataplane, loop_thread) -> Iterator[Callable[[Script], tuple[int, RawBackend]]]:
    started: list[RawBackend] = []

    def start(script: Script) -> tuple[int, RawBackend]:
        backend = RawBackend(loop_thread, script).start()
        started.append(backend)
        port = free_port()
        result = dataplane.apply(snapshot([listener(port)], [server_group(backend)]))
        assert result["lsn-web"]["status"] == "running", result
        return port, backend

    yield start
    for backend in started:
        backend.stop()


def read_response(sock: socket.socket, *, head_only: bool = False) -> bytes:
    """One Content-Length framed final response (interim heads before it included)."""
    data = b""
    while True:
        final = _final_head_end(data)
        if final is not None:
            length = 0
            for line in data[:final].split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            wanted = final + (0 if head_only else length)
            if len(data) >= wanted:
                return data
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def _final_head_end(data: bytes) -> int | None:
    start = 0
    while (end := data.find(b"\r\n\r\n", start)) >= 0:
        if not data[start:].startswith(b"HTTP/1.1 1"):
            return end + 4
        start = end + 4
    return None


def read_all(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def status_lines(data: bytes) -> list[bytes]:
    return [line for line in data.split(b"\r\n") if line.startswith(b"HTTP/1.")]


# -- ambiguous or wrong lengths ----------------------------------------------------------------


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nsplit",
            id="content_length_and_transfer_encoding",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            id="two_different_content_lengths",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            id="two_equal_content_lengths",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nhello", id="negative_content_length"
        ),
    ],
)
def test_ambiguous_response_framing_gets_502_and_the_backend_connection_closed(site, response):
    port, backend = site(answer(response))
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(GET)
        reply = read_all(sock)
    assert status_lines(reply) == [b"HTTP/1.1 502 Bad Gateway"]
    assert b"split" not in reply
    assert backend.all_closed()


def test_broken_body_cuts_the_client_connection_without_a_complete_response(site):
    port, backend = site(
        answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
    )
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(GET)
        reply = read_all(sock)
    # Whatever of the head got out, the client never reads a last chunk: it knows it was cut.
    assert not reply.endswith(b"0\r\n\r\n")
    assert b"hello" not in reply
    assert backend.all_closed()


def test_body_longer_than_its_content_length_is_cut_and_never_reaches_the_next_request(site):
    """Bytes after a complete response (here a second response, split off the first) mean the
    backend and the node disagree about framing: the connection is not pooled again."""
    port, backend = site(
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" + b"HTTP/1.1 200 OK\r\n")
    )
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(GET)
        first = read_response(sock)
        sock.sendall(GET)
        second = read_response(sock)
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert first.endswith(b"\r\n\r\nhello")
    assert second.endswith(b"\r\n\r\nhello")
    # Each request had a connection of its own; the first was closed.
    assert len(backend.connections) == 2
    assert wait_until(lambda: backend.connections[0].closed)


def test_head_response_with_a_body_does_not_leak_into_the_next_response(site):
    port, backend = site(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nleaked!!!"))
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n")
        head = read_response(sock, head_only=True)
        sock.sendall(GET)
        following = read_response(sock)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert head.endswith(b"\r\n\r\n")
    assert b"Content-Length: 9\r\n" in head
    assert status_lines(following) == [b"HTTP/1.1 200 OK"]
    assert following.endswith(b"\r\n\r\nleaked!!!")
    assert backend.connections[0].received.startswith(b"HEAD / ")
    assert wait_until(lambda: backend.connections[0].closed)


# -- interim responses (RFC 9110 15.2) ---------------------------------------------------------

EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"


def interim_then(interim: bytes, final: bytes = OK) -> Script:
    async def script(connection: RawConnection) -> None:
        await connection.send(interim)
        await asyncio.sleep(0.2)
        await connection.send(final)

    return script


def test_early_hints_reach_an_http_1_1_client_before_the_response(site):
    port, backend = site(interim_then(EARLY_HINTS))
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(GET)
        hints = sock.recv(65536)
        final = read_response(sock)
    assert hints == EARLY_HINTS
    assert final == OK or final.startswith(b"HTTP/1.1 200 OK\r\n")
    assert final.endswith(b"\r\n\r\nok")
    assert len(backend.connections) == 1


def test_interim_responses_are_not_sent_to_an_http_1_0_client(site):
    port, _ = site(interim_then(EARLY_HINTS + b"HTTP/1.1 100 Continue\r\n\r\n"))
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nHost: t\r\n\r\n")
        reply = read_all(sock)
    assert status_lines(reply) == [b"HTTP/1.1 200 OK"]
    assert reply.endswith(b"\r\n\r\nok")


def test_backend_100_continue_reaches_a_client_that_did_not_ask(site):
    port, _ = site(interim_then(b"HTTP/1.1 100 Continue\r\n\r\n"))
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(GET)
        reply = read_response(sock)
    assert status_lines(reply) == [b"HTTP/1.1 100 Continue", b"HTTP/1.1 200 OK"]


def test_expect_100_continue_gets_exactly_one_100(site):
    """The node answers the expectation itself; the backend's own 100 is not sent twice."""

    async def script(connection: RawConnection) -> None:
        await connection.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        while not connection.received.endswith(b"data"):
            connection.received += await connection.reader.read(65536)
        await connection.send(OK)

    port, backend = site(script)
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(
            b"PUT /f HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"data")
        reply = read_response(sock)
    assert status_lines(reply) == [b"HTTP/1.1 200 OK"]
    assert reply.endswith(b"ok")
    assert b"expect:" not in backend.connections[0].received.lower()


# -- huge heads --------------------------------------------------------------------------------


def huge_head(size: int) -> Script:
    """A 200 whose header block is `size` bytes, written in 64 KiB pieces."""
    line = b"X-Filler: " + b"a" * 1000 + b"\r\n"

    async def script(connection: RawConnection) -> None:
        await connection.send(b"HTTP/1.1 200 OK\r\n")
        sent = 0
        while sent < size:
            await connection.send(line * 64)
            sent += len(line) * 64
        await connection.send(b"Content-Length: 2\r\n\r\nok")

    return script


@pytest.mark.parametrize("size", [70 * 1024, 16 * 1024 * 1024, 64 * 1024 * 1024])
def test_response_head_over_64_kib_gets_502_and_the_backend_connection_closed(site, size):
    port, backend = site(huge_head(size))
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(GET)
        reply = read_all(sock)
    assert status_lines(reply) == [b"HTTP/1.1 502 Bad Gateway"]
    assert b"X-Filler" not in reply
    assert backend.all_closed()


def test_interim_heads_count_toward_the_64_kib(site):
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: <" + b"a" * 1000 + b">\r\n\r\n"
    port, backend = site(answer(hints * 80 + OK))
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(GET)
        reply = read_all(sock)
    assert status_lines(reply)[-1] == b"HTTP/1.1 502 Bad Gateway"
    assert b"200 OK" not in reply
    assert backend.all_closed()


def test_head_just_under_64_kib_in_many_reads_is_forwarded_whole(site):
    fields = b"".join(b"X-Field-%02d: %s\r\n" % (n, b"v" * 1000) for n in range(60))

    async def script(connection: RawConnection) -> None:
        data = b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 2\r\n\r\nok"
        for start in range(0, len(data), 1500):
            await connection.send(data[start : start + 1500])
            await asyncio.sleep(0.005)
        await connection.read_head(2)
        await connection.send(OK)

    port, backend = site(script)
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(GET)
        reply = read_response(sock)
        # The backend connection is good for the next request.
        sock.sendall(GET)
        again = read_response(sock)
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    assert fields in reply
    assert reply.endswith(b"\r\n\r\nok")
    assert again.endswith(b"\r\n\r\nok")
    assert len(backend.connections) == 1
