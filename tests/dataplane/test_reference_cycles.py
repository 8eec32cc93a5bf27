"""Finished connections and streams are freed by reference counting, not by the cycle collector.

A connection whose parts hold each other (the proxy and its parser's callbacks, an HTTP/2 stream
and the proxy it is the transport of) lives until the next collection, and each collection walks
every object young enough: measured on HTTP/2, that was 8,000 instructions per request. These
tests run real traffic of each protocol a listener speaks (HTTP/1.1, HTTPS, HTTP/2, TCP, TCP SSL,
UDP, QUIC, gRPC and WebSocket) with the collector saving what it finds, and expect it to find none
of the node's objects once the traffic has ended.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator

import grpc
import pytest
import trustme
from websockets.asyncio.server import Server as WebSocketServer
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as serve_websockets
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as connect_websocket

from tests.dataplane.conftest import (
    WAIT,
    NodeHandle,
    Recorded,
    Reply,
    listener,
    read_until_closed,
    server_group,
    snapshot,
    wait_until,
)
from tests.dataplane.test_datagram_node import (
    ask,
    udp_client,
    udp_echoes,  # noqa: F401 - a fixture
    udp_group,
)
from tests.dataplane.test_grpc import (
    SERVICE,
    echo_servers,  # noqa: F401 - a fixture
    grpc_group,
    grpc_listener,  # noqa: F401 - a fixture
)
from tests.dataplane.test_http2 import h2_listener  # noqa: F401 - a fixture
from tests.dataplane.test_quic import (
    Server,
    leaf,  # noqa: F401 - a fixture
    quic,  # noqa: F401 - a fixture
)
from tests.dataplane.test_tcp import echo as tcp_echo  # noqa: F401 - a fixture
from tests.dataplane.test_tcp import first_answer, serve, tcp_group, tls_snapshot
from tests.dataplane.test_websocket import echo as ws_echo  # noqa: F401 - a fixture
from tests.fixtures.ports import free_port, free_udp_port

needs_h2load = pytest.mark.skipif(
    subprocess.run(["which", "h2load"], capture_output=True, check=False).returncode != 0,
    reason="h2load (nghttp2-client) drives the traffic",
)


# Every test makes at least ten connections, sessions or streams of each kind it looks at, most of
# them 40 or more, so that one object left per connection counts at least this often.
PER_CONNECTION = 10


@pytest.fixture
def collector_saves_all() -> Iterator[None]:
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def node_garbage() -> dict[str, int]:
    """The node's objects that only the cycle collector could free, by type, where a type
    counts ten or more: one per connection or request, not a listener's or a node's own
    (those of an earlier test's node are collected whenever it lets go of them)."""
    # Closing a connection runs its last callbacks on the next loop iterations.
    time.sleep(0.3)
    gc.collect()
    counts = collections.Counter(
        type(found).__qualname__
        for found in gc.garbage
        if type(found).__module__.startswith("dataplane")
    )
    return {name: count for name, count in counts.items() if count >= PER_CONNECTION}


def settled(dataplane: NodeHandle, listener_id: str) -> None:
    """Wait until the node has ended every connection of the listener: one still open is not
    garbage yet, and a test that looked before it ended would pass for nothing."""
    assert wait_until(lambda: dataplane.stats(listener_id)["active_connections"] == 0)


def h2load(*args: str, answered: str = "2xx") -> None:
    """Run h2load; every request gets a response of the `answered` class."""
    result = subprocess.run(
        ["h2load", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    requests = args[args.index("-n") + 1]
    assert f"{requests} done" in result.stdout, result.stdout
    assert f" {requests} {answered}" in result.stdout, result.stdout


@needs_h2load
def test_http2_streams_leave_no_cycles(h2_listener, collector_saves_all):  # noqa: F811
    port, web = h2_listener()
    h2load("-n", "400", "-c", "4", "-m", "10", f"https://127.0.0.1:{port}/")
    assert len(web.requests) == 400
    assert node_garbage() == {}


@needs_h2load
def test_http2_answers_of_the_node_its_own_leave_no_cycles(
    h2_listener,  # noqa: F811
    loop_thread,
    collector_saves_all,
):
    # With its server gone, the node answers 502 itself: written as HTTP/1.1 and read back by
    # the stream's response parser, which holds the stream through its callbacks.
    port, web = h2_listener()
    loop_thread.run(web.stop())
    h2load("-n", "40", "-c", "2", "-m", "4", f"https://127.0.0.1:{port}/", answered="5xx")
    assert node_garbage() == {}


@needs_h2load
def test_https_connections_leave_no_cycles(h2_listener, collector_saves_all):  # noqa: F811
    port, web = h2_listener(http2=False)
    url = f"https://127.0.0.1:{port}/"
    h2load("-n", "200", "-c", "4", "--h1", url)
    h2load("-n", "100", "-c", "4", "--h1", "-H", "Connection: close", url)
    assert len(web.requests) == 300
    assert node_garbage() == {}


@needs_h2load
def test_plain_http_connections_and_closed_backend_connections_leave_no_cycles(
    dataplane, backends, collector_saves_all
):
    def closing(request: Recorded) -> Reply:
        # Every backend connection ends after one response: the upstream side closes too.
        return Reply(body=b"ok", close=True)

    web = backends("web", closing)
    port = free_port()
    result = dataplane.apply(snapshot([listener(port)], [server_group(web)]))
    assert result["lsn-web"]["status"] == "running", result
    h2load("-n", "100", "-c", "4", "--h1", "-H", "Connection: close", f"http://127.0.0.1:{port}/")
    assert len(web.requests) == 100
    assert node_garbage() == {}


@needs_h2load
def test_http_connections_under_a_bandwidth_limit_leave_no_cycles(
    dataplane, backends, collector_saves_all
):
    web = backends("web")
    port = free_port()
    result = dataplane.apply(snapshot([listener(port, bandwidth_mbit=100)], [server_group(web)]))
    assert result["lsn-web"]["status"] == "running", result
    # Each connection of a limited listener writes to its client through a ThrottledWriter.
    h2load("-n", "100", "-c", "4", "--h1", "-H", "Connection: close", f"http://127.0.0.1:{port}/")
    assert len(web.requests) == 100
    settled(dataplane, "lsn-web")
    assert node_garbage() == {}


# -- TCP and TCP SSL -------------------------------------------------------------------------------


def test_tcp_connections_leave_no_cycles(dataplane, tcp_echo, collector_saves_all):  # noqa: F811
    backend = tcp_echo("web")
    port = serve(dataplane, [tcp_group(backend)])
    for n in range(100):
        assert first_answer(port, b"%d" % n) == b"web:%d" % n
    settled(dataplane, "lsn-tcp")
    assert node_garbage() == {}


def test_tcp_connections_the_backend_closes_first_leave_no_cycles(
    dataplane, loop_thread, collector_saves_all
):
    headers: list[bytes] = []

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        headers.append(await reader.readline())
        writer.write(b"hello and goodbye")
        await writer.drain()
        writer.close()

    server = loop_thread.run(asyncio.start_server(greet, "127.0.0.1", 0))
    greeter = Server("greeter", server.sockets[0].getsockname()[1])
    try:
        # With a PROXY protocol header, which the backend reads before it answers and closes.
        port = serve(dataplane, [tcp_group(greeter)], proxy_protocol="v1")
        for _ in range(100):
            with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
                assert read_until_closed(sock) == b"hello and goodbye"
        settled(dataplane, "lsn-tcp")
    finally:
        loop_thread.call(server.close)
    assert len(headers) == 100
    assert all(header.startswith(b"PROXY TCP4 127.0.0.1 ") for header in headers)
    assert node_garbage() == {}


def test_tcp_connections_to_a_refusing_server_leave_no_cycles(dataplane, collector_saves_all):
    # Nobody listens there: every connect fails, and so does its one retry on the other server.
    port = serve(dataplane, [tcp_group(Server("gone", free_port()), Server("also", free_port()))])
    for _ in range(100):
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            assert read_until_closed(sock) == b""
    settled(dataplane, "lsn-tcp")
    assert node_garbage() == {}


def test_tcp_connections_under_a_bandwidth_limit_leave_no_cycles(
    dataplane,
    tcp_echo,  # noqa: F811
    collector_saves_all,
):
    backend = tcp_echo("web")
    # Each connection of a limited listener writes to its client through a ThrottledWriter.
    port = serve(dataplane, [tcp_group(backend)], bandwidth_mbit=100)
    for n in range(100):
        assert first_answer(port, b"%d" % n) == b"web:%d" % n
    settled(dataplane, "lsn-tcp")
    assert node_garbage() == {}


def test_tcp_ssl_connections_leave_no_cycles(
    dataplane,
    tcp_echo,  # noqa: F811
    ca,
    collector_saves_all,
):
    backend = tcp_echo("plain")
    port = free_port()
    result = dataplane.apply(tls_snapshot(port, backend, ca))
    assert result["lsn-tls"]["status"] == "running", result
    client = ssl.create_default_context()
    ca.configure_trust(client)
    for n in range(50):
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
            with client.wrap_socket(raw, server_hostname="tcp.example.com") as tls:
                tls.sendall(b"%d" % n)
                assert tls.recv(100) == b"plain:%d" % n
    settled(dataplane, "lsn-tls")
    assert node_garbage() == {}


def test_tcp_ssl_handshakes_that_fail_leave_no_cycles(
    dataplane,
    tcp_echo,  # noqa: F811
    ca,
    collector_saves_all,
):
    backend = tcp_echo("plain")
    port = free_port()
    client_ca = trustme.CA()
    snap = tls_snapshot(port, backend, ca, ca_certificate_id="cert-clientca")
    snap["ca_certificates"] = [
        {"id": "cert-clientca", "certificate_pem": client_ca.cert_pem.bytes().decode()}
    ]
    result = dataplane.apply(snap)
    assert result["lsn-tls"]["status"] == "running", result
    anonymous = ssl.create_default_context()
    ca.configure_trust(anonymous)
    # Mutual authentication, and no client certificate: the node refuses every handshake.
    for _ in range(30):
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
                with anonymous.wrap_socket(raw, server_hostname="tcp.example.com") as tls:
                    tls.sendall(b"no")
                    tls.recv(100)
    assert backend.received == b""
    settled(dataplane, "lsn-tls")
    assert node_garbage() == {}


# -- UDP -------------------------------------------------------------------------------------------


def test_udp_sessions_that_expire_leave_no_cycles(
    dataplane,
    udp_echoes,  # noqa: F811
    collector_saves_all,
):
    echo = udp_echoes("u")
    port = free_udp_port()
    result = dataplane.apply(
        snapshot(
            # The shortest idle timeout there is: the sessions end a second after their last
            # datagram.
            [listener(port, protocol="udp", listener_id="lsn-udp", idle_timeout=1)],
            [udp_group(echo)],
        )
    )
    assert result["lsn-udp"]["status"] == "running", result
    clients = [udp_client() for _ in range(50)]
    try:
        for client in clients:
            assert ask(client, port, b"hi") == b"u:hi"
            assert ask(client, port, b"again") == b"u:again"
    finally:
        for client in clients:
            client.close()
    settled(dataplane, "lsn-udp")
    assert node_garbage() == {}


# -- QUIC ------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_quic_connections_and_http3_requests_leave_no_cycles(
    quic,  # noqa: F811
    collector_saves_all,
):
    backend = await quic.backend("web", lambda request: Reply(body=b"over h3"))
    listener_handle, port = await quic.listener(quic.settings(backend))

    async def connection() -> None:
        async with quic.client(port) as client:
            for _ in range(3):
                status, _, body = await client.request(b"GET", b"/")
                assert (status, body) == (200, b"over h3")

    await asyncio.gather(*(connection() for _ in range(15)))
    assert len(backend.requests) == 45
    # The node's side of a closed QUIC connection ends after its draining period.
    deadline = asyncio.get_running_loop().time() + WAIT
    while listener_handle.connections or quic.stats.active_connections:
        assert asyncio.get_running_loop().time() < deadline, "connections still open"
        await asyncio.sleep(0.05)
    assert node_garbage() == {}


# -- gRPC ------------------------------------------------------------------------------------------


@pytest.mark.xfail(
    reason=(
        "a cycle per call in dataplane/protocols/grpc.py, which this change may not edit: "
        "GrpcStream.request_out (a dataplane.nghttp2.Outbound) holds the bound method "
        "GrpcStream._request_sent as its on_sent, and GrpcStream._attach sets the response "
        "Outbound's on_sent (Stream.out) to the bound method GrpcStream._response_sent. "
        "It could be broken once the call is over and nghttp2 has taken both bodies (the "
        "client's stream left Http2Connection.streams, or GrpcUpstream._ended/on_close) by "
        "setting both Outbounds' on_sent to None, as Stream._proxy_lost does for HTTP/2 streams"
    ),
    raises=AssertionError,
    strict=True,
)
def test_grpc_calls_leave_no_cycles(
    dataplane,
    grpc_listener,  # noqa: F811
    echo_servers,  # noqa: F811
    ca,
    collector_saves_all,
):
    first = grpc_listener(grpc_group(echo_servers("a")))
    target = first._channel.target().decode()
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
    options = [
        ("grpc.ssl_target_name_override", "grpc.example.com"),
        # Channels share connections through a process-wide pool unless told otherwise: each
        # channel here is a connection of its own, so that each ends when its channel closes.
        ("grpc.use_local_subchannel_pool", 1),
    ]
    for n in range(12):
        with grpc.secure_channel(target, credentials, options=options) as channel:
            say = channel.unary_unary(f"/{SERVICE}/Say")
            for call in range(5):
                assert say(b"%d.%d" % (n, call), timeout=WAIT) == b"a: %d.%d" % (n, call)
    settled(dataplane, "lsn-tls")
    assert node_garbage() == {}


# -- WebSocket -------------------------------------------------------------------------------------


def test_websocket_sessions_leave_no_cycles(dataplane, ws_echo, collector_saves_all):  # noqa: F811
    port = free_port()
    dataplane.apply(snapshot([listener(port)], [server_group(ws_echo)]))
    for n in range(30):
        with connect_websocket(
            f"ws://127.0.0.1:{port}/", open_timeout=WAIT, close_timeout=WAIT
        ) as ws:
            ws.send(f"hello {n}")
            assert ws.recv(WAIT) == f"HELLO {n}"
    settled(dataplane, "lsn-web")
    assert node_garbage() == {}


def test_websocket_sessions_the_backend_ends_leave_no_cycles(
    dataplane, loop_thread, collector_saves_all
):
    async def one_answer(connection: ServerConnection) -> None:
        await connection.send(await connection.recv())
        await connection.close()

    async def start() -> WebSocketServer:
        return await serve_websockets(one_answer, "127.0.0.1", 0)

    server = loop_thread.run(start())
    backend = Server("ws", server.sockets[0].getsockname()[1])
    try:
        port = free_port()
        dataplane.apply(snapshot([listener(port)], [server_group(backend)]))
        for n in range(30):
            with connect_websocket(
                f"ws://127.0.0.1:{port}/", open_timeout=WAIT, close_timeout=WAIT
            ) as ws:
                ws.send(f"once {n}")
                assert ws.recv(WAIT) == f"once {n}"
                with pytest.raises(ConnectionClosed):
                    ws.recv(WAIT)
        settled(dataplane, "lsn-web")
    finally:
        loop_thread.call(server.close)
        loop_thread.run(server.wait_closed())
    assert node_garbage() == {}
