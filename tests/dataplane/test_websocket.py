"""WebSocket and WSS pass-through (seed 003, on by default), with a real `websockets` client and
server: the upgrade reaches the backend with its headers, and both directions stream until either
side closes."""

from __future__ import annotations

import asyncio
import socket

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.dataplane.conftest import (
    WAIT,
    Reply,
    certificate_entry,
    get,
    listener,
    raw_exchange,
    server_group,
    snapshot,
    unverified_client,
    wait_until,
)
from tests.fixtures.ports import free_port


class EchoServer:
    """A websockets server that echoes every message back, upper-cased, and records headers."""

    def __init__(self) -> None:
        self.server = None
        self.port = 0
        self.name = "ws"
        self.request_headers: list[dict[str, str]] = []
        self.pushes: asyncio.Queue[str] = asyncio.Queue()
        self.closed = 0

    async def handler(self, connection: ServerConnection) -> None:
        self.request_headers.append(dict(connection.request.headers.raw_items()))
        try:
            async for message in connection:
                if message == "push":
                    # The server speaks first, several times: the backend-to-client direction.
                    for index in range(3):
                        await connection.send(f"pushed {index}")
                    continue
                await connection.send(message.upper() if isinstance(message, str) else message)
        except ConnectionClosed:
            pass
        finally:
            self.closed += 1

    async def start(self) -> None:
        self.server = await serve(self.handler, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.close()
            await server.wait_closed()


@pytest.fixture
def echo(loop_thread):
    server = EchoServer()
    loop_thread.run(server.start())
    yield server
    loop_thread.run(server.stop())


def test_websocket_echoes_both_ways_through_an_http_listener(dataplane, echo):
    port = free_port()
    dataplane.apply(snapshot([listener(port)], [server_group(echo)]))

    with connect(f"ws://127.0.0.1:{port}/chat", open_timeout=WAIT, close_timeout=WAIT) as ws:
        ws.send("hello")
        assert ws.recv(WAIT) == "HELLO"
        ws.send(b"\x00\x01binary")
        assert ws.recv(WAIT) == b"\x00\x01binary"
        ws.send("push")
        assert [ws.recv(WAIT) for _ in range(3)] == ["pushed 0", "pushed 1", "pushed 2"]
        big = "x" * 300_000
        ws.send(big)
        assert ws.recv(WAIT) == big.upper()

    headers = {name.lower(): value for name, value in echo.request_headers[0].items()}
    assert headers["upgrade"].lower() == "websocket"
    assert "upgrade" in headers["connection"].lower()
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert "sec-websocket-key" in headers
    # The client's close reaches the backend, which ends its side.
    assert wait_until(lambda: echo.closed == 1)
    assert wait_until(lambda: dataplane.stats("lsn-web")["active_connections"] == 0)
    assert dataplane.stats("lsn-web")["responses"]["1xx"] == 1


def test_wss_through_an_https_listener(dataplane, echo, ca):
    port = free_port()
    leaf = ca.issue_cert("ws.example.com")
    dataplane.apply(
        snapshot(
            [
                listener(
                    port,
                    protocol="https",
                    default_certificate_id="cert-ws",
                    x_forwarded_proto=True,
                )
            ],
            [server_group(echo)],
            certificates=[certificate_entry("cert-ws", leaf)],
        )
    )
    context = unverified_client()
    with connect(
        f"wss://127.0.0.1:{port}/", ssl=context, open_timeout=WAIT, close_timeout=WAIT
    ) as ws:
        for word in ("one", "two", "three"):
            ws.send(word)
            assert ws.recv(WAIT) == word.upper()
    headers = {name.lower(): value for name, value in echo.request_headers[0].items()}
    assert headers["x-forwarded-proto"] == "https"
    assert wait_until(lambda: echo.closed == 1)


def test_backend_closing_ends_the_client_side(dataplane, loop_thread, echo):
    port = free_port()
    dataplane.apply(snapshot([listener(port)], [server_group(echo)]))
    with connect(f"ws://127.0.0.1:{port}/", open_timeout=WAIT, close_timeout=WAIT) as ws:
        ws.send("ping")
        assert ws.recv(WAIT) == "PING"
        loop_thread.run(echo.stop())
        with pytest.raises(ConnectionClosed):
            ws.recv(WAIT)
    assert wait_until(lambda: dataplane.stats("lsn-web")["active_connections"] == 0)


def test_idle_tunnel_is_closed_after_the_idle_timeout(dataplane, echo):
    port = free_port()
    dataplane.apply(snapshot([listener(port, idle_timeout=1)], [server_group(echo)]))
    with connect(f"ws://127.0.0.1:{port}/", open_timeout=WAIT, close_timeout=WAIT) as ws:
        ws.send("a")
        assert ws.recv(WAIT) == "A"
        # Nothing moves: the node cuts the tunnel after the listener's idle timeout.
        with pytest.raises(ConnectionClosed):
            ws.recv(WAIT)
    assert wait_until(lambda: echo.closed == 1)


def test_a_backend_refusing_the_upgrade_answers_as_plain_http(dataplane, backends):
    plain = backends("plain", lambda request: Reply(status=404, body=b"no websocket here"))
    port = free_port()
    dataplane.apply(snapshot([listener(port)], [server_group(plain)]))
    with pytest.raises(InvalidStatus) as caught:
        connect(f"ws://127.0.0.1:{port}/", open_timeout=WAIT)
    assert caught.value.response.status_code == 404
    # The backend saw the upgrade request with its headers.
    assert plain.requests[0].header("Upgrade") == "websocket"


def test_other_upgrades_are_not_forwarded(dataplane, backends):
    plain = backends("plain")
    port = free_port()
    dataplane.apply(snapshot([listener(port)], [server_group(plain)]))
    data = raw_exchange(
        port,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
    )
    assert data.startswith(b"HTTP/1.1 200 ")
    assert plain.requests[0].header("Upgrade") is None
    # Plain requests keep working on the listener.
    assert get(port)[0] == 200


def test_early_client_bytes_after_the_upgrade_reach_the_backend(dataplane, echo):
    """A client may pipeline its first frame behind the upgrade request."""
    port = free_port()
    dataplane.apply(snapshot([listener(port)], [server_group(echo)]))
    # A masked text frame "hi" (RFC 6455 5.2), sent in the same write as the request.
    mask = b"\x01\x02\x03\x04"
    payload = bytes(c ^ mask[i % 4] for i, c in enumerate(b"hi"))
    frame = b"\x81\x82" + mask + payload
    request = (
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(request + frame)
        received = b""
        while b"HI" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    assert received.startswith(b"HTTP/1.1 101 ")
    assert b"\x81\x02HI" in received
