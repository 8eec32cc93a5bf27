"""Backend responses as the upstream connection sees them: heads cut out of the raw reads."""

from __future__ import annotations

import asyncio
import http.client

from tests.dataplane.conftest import WAIT, listener, snapshot
from tests.fixtures.ports import free_port


def _scripted_backend(loop_thread, script):
    """A backend that answers each request head with `script(n)`: a list of byte pieces, each
    written and drained on its own (so the dataplane reads them separately)."""
    connections = []

    async def serve(reader, writer):
        connections.append(writer)
        count = 0
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                for piece in script(count):
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.02)
                count += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = loop_thread.run(asyncio.start_server(serve, "127.0.0.1", 0))
    return server.sockets[0].getsockname()[1], connections


def _group(port):
    return {
        "id": "sgp-web",
        "servers": [{"id": "srv-raw", "address": "127.0.0.1", "port": port}],
        "health_check": {"enabled": False},
    }


def _exchange(port, count):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    answers = []
    try:
        for _ in range(count):
            connection.request("GET", "/")
            response = connection.getresponse()
            answers.append((response.status, response.getheaders(), response.read()))
    finally:
        connection.close()
    return answers


def test_a_head_split_over_several_reads_is_put_together(dataplane, loop_thread):
    backend_port, _ = _scripted_backend(
        loop_thread,
        lambda n: [
            b"HTTP/1.1 201 Crea",
            b"ted\r\nX-Piece: one\r\nConnec",
            b"tion: keep-alive\r\nContent-Length: 5\r",
            b"\n\r\nhello",
        ],
    )
    port = free_port()
    dataplane.apply(snapshot([listener(port)], [_group(backend_port)]))

    answers = _exchange(port, 2)

    for status, headers, body in answers:
        assert (status, body) == (201, b"hello")
        assert ("X-Piece", "one") in headers
        assert "Connection" not in dict(headers)


def test_interim_response_in_the_same_read_as_the_final_one(dataplane, loop_thread):
    backend_port, _ = _scripted_backend(
        loop_thread,
        lambda n: [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"],
    )
    port = free_port()
    dataplane.apply(snapshot([listener(port)], [_group(backend_port)]))

    [(status, headers, body)] = _exchange(port, 1)

    assert (status, body) == (200, b"ok")
    assert dict(headers)["Content-Length"] == "2"


def test_header_names_and_order_pass_through_and_hop_by_hop_lines_are_cut(dataplane, loop_thread):
    backend_port, _ = _scripted_backend(
        loop_thread,
        lambda n: [
            b"HTTP/1.1 200 OK\r\nx-lower: a\r\nKEEP-ALIVE: timeout=5\r\nX-Mixed-Case: b\r\n"
            b"connection: keep-alive, X-Secret\r\nUpgrade: h2c\r\ncontent-length: 0\r\n\r\n"
        ],
    )
    port = free_port()
    dataplane.apply(snapshot([listener(port)], [_group(backend_port)]))

    [(status, headers, _)] = _exchange(port, 1)

    assert status == 200
    assert [name for name, _ in headers] == ["x-lower", "X-Mixed-Case", "content-length"]


def test_bytes_after_a_response_keep_the_connection_out_of_the_pool(dataplane, loop_thread):
    # The stray bytes arrive in the same read as the response: the connection is closed, and
    # the next request goes on a new one.
    backend_port, connections = _scripted_backend(
        loop_thread,
        lambda n: [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n"],
    )
    port = free_port()
    dataplane.apply(snapshot([listener(port)], [_group(backend_port)]))

    answers = _exchange(port, 3)

    assert [(status, body) for status, _, body in answers] == [(200, b"ok")] * 3
    assert len(connections) == 3
