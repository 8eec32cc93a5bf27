"""UDP and QUIC listeners through Node.apply, and the QUIC upgrade of HTTPS listeners.

UDP: real UDP echo servers behind a udp listener, sessions per client, in-place updates, UDP
health checks taking a dead server out. QUIC: aioquic's client makes HTTP/3 requests through a
quic listener to a recording HTTP backend; the linked HTTPS listener advertises it with Alt-Svc.
"""

from __future__ import annotations

import asyncio
import http.client
import socket
import ssl

import pytest
from aioquic.asyncio.client import connect as quic_connect
from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration

from tests.dataplane.conftest import (
    WAIT,
    Reply,
    certificate_entry,
    listener,
    server_group,
    snapshot,
    wait_until,
)
from tests.dataplane.test_quic import H3Client
from tests.fixtures.ports import free_port, free_udp_port

SERVER_NAME = "quic.example"


class UdpEcho(asyncio.DatagramProtocol):
    """Answers each datagram with b"<name>:<data>"."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.transport: asyncio.DatagramTransport | None = None
        self.received = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr) -> None:
        self.received += 1
        self.transport.sendto(self.name.encode() + b":" + data, addr)


@pytest.fixture
def udp_echoes(loop_thread):
    started: list[UdpEcho] = []

    def start(name: str) -> UdpEcho:
        async def open_endpoint() -> UdpEcho:
            loop = asyncio.get_running_loop()
            _, echo = await loop.create_datagram_endpoint(
                lambda: UdpEcho(name), local_addr=("127.0.0.1", 0)
            )
            return echo

        echo = loop_thread.run(open_endpoint())
        started.append(echo)
        return echo

    yield start
    for echo in started:
        if echo.transport is not None:
            loop_thread.loop.call_soon_threadsafe(echo.transport.close)


def ask(sock: socket.socket, port: int, data: bytes) -> bytes:
    sock.sendto(data, ("127.0.0.1", port))
    return sock.recv(65536)


def udp_client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(WAIT)
    sock.bind(("127.0.0.1", 0))
    return sock


def udp_group(*echoes: UdpEcho, **fields) -> dict:
    group = server_group(*echoes, protocol="udp")  # type: ignore[arg-type]
    group.update(fields)
    return group


def test_udp_listener_relays_to_real_echo_servers_and_keeps_sessions(dataplane, udp_echoes):
    a, b = udp_echoes("a"), udp_echoes("b")
    port = free_udp_port()
    results = dataplane.apply(
        snapshot([listener(port, protocol="udp", listener_id="lsn-udp")], [udp_group(a, b)])
    )
    assert results["lsn-udp"] == {"status": "running", "reason": ""}

    clients = [udp_client() for _ in range(4)]
    try:
        first = [ask(client, port, b"hello") for client in clients]
        # Round robin over two servers: two clients each; a client stays on its server.
        assert sorted(reply.split(b":")[0] for reply in first) == [b"a", b"a", b"b", b"b"]
        for client, reply in zip(clients, first, strict=True):
            server = reply.split(b":")[0]
            assert ask(client, port, b"again") == server + b":again"
        status = dataplane.status()["listeners"]["lsn-udp"]
        assert status["protocol"] == "udp"
        assert status["udp"]["sessions"] == 4
        assert status["udp"]["datagrams_in"] == 8
        assert status["udp"]["datagrams_out"] == 8
        assert status["counters"]["active_connections"] == 4
        assert [backend["active"] for backend in status["backends"]] == [2, 2]

        # A new generation (a weight change) updates in place: sessions and the port stay.
        results = dataplane.apply(
            snapshot(
                [listener(port, protocol="udp", listener_id="lsn-udp", idle_timeout=30)],
                [udp_group((a, 50), b)],  # type: ignore[arg-type]
                generation=2,
            )
        )
        assert results["lsn-udp"]["status"] == "running"
        for client, reply in zip(clients, first, strict=True):
            server = reply.split(b":")[0]
            assert ask(client, port, b"still") == server + b":still"
        assert dataplane.status()["listeners"]["lsn-udp"]["udp"]["sessions"] == 4

        # Stopping closes the socket and the sessions.
        dataplane.apply(
            snapshot(
                [listener(port, protocol="udp", listener_id="lsn-udp", enabled=False)],
                [udp_group(a, b)],
                generation=3,
            )
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", port))  # free again
    finally:
        for client in clients:
            client.close()


def test_udp_health_check_takes_a_dead_server_out(dataplane, udp_echoes, loop_thread):
    alive = udp_echoes("alive")
    dead_port = free_udp_port()  # nobody listens: ICMP port unreachable
    group = server_group(alive, protocol="udp")
    group["servers"].append(
        {"id": "srv-dead", "address": "127.0.0.1", "port": dead_port, "weight": 100}
    )
    group["health_check"] = {
        "protocol": "udp",
        "udp_request": "ping",
        "udp_expected": "alive:ping",
        "interval": 1,
        "timeout": 1,
        "unhealthy_threshold": 1,
        "healthy_threshold": 1,
    }
    port = free_udp_port()
    dataplane.apply(snapshot([listener(port, protocol="udp", listener_id="lsn-udp")], [group]))

    def health() -> dict[str, tuple[bool, str]]:
        backends = dataplane.status()["listeners"]["lsn-udp"]["backends"]
        return {b["id"]: (b["healthy"], b["reason"]) for b in backends}

    assert wait_until(lambda: health()["srv-dead"][0] is False)
    assert health()["srv-dead"][1] == "port unreachable"
    assert wait_until(lambda: health()["srv-alive-0"][1].startswith("ok"))
    assert health()["srv-alive-0"][0] is True
    clients = [udp_client() for _ in range(3)]
    try:
        assert {ask(client, port, b"x") for client in clients} == {b"alive:x"}
    finally:
        for client in clients:
            client.close()


def test_udp_and_tcp_listeners_share_a_port_number(dataplane, udp_echoes, backends):
    echo = udp_echoes("u")
    web = backends("web")
    port = free_port()
    results = dataplane.apply(
        snapshot(
            [
                listener(port, protocol="udp", listener_id="lsn-udp", group_id="sgp-udp"),
                listener(port, listener_id="lsn-web"),
            ],
            [
                udp_group(echo, id="sgp-udp"),
                server_group(web),
            ],
        )
    )
    assert {key: value["status"] for key, value in results.items()} == {
        "lsn-udp": "running",
        "lsn-web": "running",
    }
    client = udp_client()
    try:
        assert ask(client, port, b"hi") == b"u:hi"
    finally:
        client.close()


# -- QUIC ------------------------------------------------------------------------------------------


def quic_request(ca, port: int, path: bytes = b"/") -> tuple[int, dict[bytes, bytes], bytes]:
    """One HTTP/3 request with aioquic's client, on its own event loop."""

    async def run() -> tuple[int, dict[bytes, bytes], bytes]:
        configuration = QuicConfiguration(
            is_client=True,
            alpn_protocols=list(H3_ALPN),
            server_name=SERVER_NAME,
            idle_timeout=WAIT,
        )
        configuration.load_verify_locations(cadata=ca.cert_pem.bytes())
        async with asyncio.timeout(WAIT):
            async with quic_connect(
                "127.0.0.1", port, configuration=configuration, create_protocol=H3Client
            ) as client:
                return await client.request(b"GET", path)  # type: ignore[attr-defined]

    return asyncio.run(run())


def quic_snapshot(ca, backend, quic_port: int, https_port: int, generation: int = 1) -> dict:
    leaf = ca.issue_cert(SERVER_NAME)
    return snapshot(
        [
            listener(
                quic_port,
                protocol="quic",
                listener_id="lsn-quic",
                default_certificate_id="cert-quic",
                x_forwarded_proto=True,
            ),
            listener(
                https_port,
                protocol="https",
                listener_id="lsn-tls",
                default_certificate_id="cert-quic",
                quic_listener_id="lsn-quic",
            ),
        ],
        [server_group(backend)],
        certificates=[certificate_entry("cert-quic", leaf)],
        generation=generation,
    )


def https_get(ca, port: int) -> http.client.HTTPResponse:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=WAIT, context=context)
    connection._context.check_hostname = False  # type: ignore[attr-defined]
    connection.request("GET", "/", headers={"Host": SERVER_NAME})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def test_http3_through_node_apply_and_alt_svc_on_the_https_listener(dataplane, backends, ca):
    app = backends("app")
    quic_port, https_port = free_udp_port(), free_port()
    results = dataplane.apply(quic_snapshot(ca, app, quic_port, https_port))
    assert results == {
        "lsn-quic": {"status": "running", "reason": ""},
        "lsn-tls": {"status": "running", "reason": ""},
    }

    status, _, body = quic_request(ca, quic_port, b"/over-h3")
    assert (status, body) == (200, b"app")
    recorded = app.requests[-1]
    assert recorded.target == "/over-h3"
    assert recorded.header("X-Forwarded-For") == "127.0.0.1"
    assert recorded.header("X-Forwarded-Proto") == "https"
    assert dataplane.stats("lsn-quic")["requests"] == 1

    response = https_get(ca, https_port)
    assert response.getheader("Alt-Svc") == f'h3=":{quic_port}"; ma=86400'

    # The QUIC listener moves: the HTTPS listener advertises the new port.
    new_quic_port = free_udp_port()
    dataplane.apply(quic_snapshot(ca, app, new_quic_port, https_port, generation=2))
    response = https_get(ca, https_port)
    assert response.getheader("Alt-Svc") == f'h3=":{new_quic_port}"; ma=86400'
    assert quic_request(ca, new_quic_port)[0] == 200


def test_a_stopped_quic_listener_is_not_advertised(dataplane, backends, ca):
    app = backends("app")
    quic_port, https_port = free_udp_port(), free_port()
    data = quic_snapshot(ca, app, quic_port, https_port)
    data["listeners"][0]["enabled"] = False
    dataplane.apply(data)
    assert https_get(ca, https_port).getheader("Alt-Svc") is None


def test_backend_alt_svc_is_kept(dataplane, backends, ca):
    app = backends("app", lambda request: Reply(headers=[("Alt-Svc", "clear")], body=b"x"))
    dataplane.apply(quic_snapshot(ca, app, free_udp_port(), free_port()))
    https_port = dataplane.status()["listeners"]["lsn-tls"]["port"]
    response = https_get(ca, https_port)
    assert response.getheader("Alt-Svc") == "clear"
