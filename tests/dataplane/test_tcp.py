"""TCP and TCP SSL listeners: a byte proxy with balancing, persistence, ACL and TLS termination."""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import time

import pytest
import trustme

from tests.dataplane.conftest import (
    WAIT,
    LoopThread,
    certificate_entry,
    listener,
    snapshot,
    wait_until,
)
from tests.fixtures.ports import free_port


class EchoBackend:
    """Answers every read with "<name>:<data>" and says goodbye when the client half-closes."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.received = bytearray()
        self.connections = 0
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(writer)
        try:
            while data := await reader.read(65536):
                self.received += data
                writer.write(self.name + b":" + data)
                await writer.drain()
            writer.write(b"bye from " + self.name)
            await writer.drain()
            writer.close()
        except ConnectionError:
            pass
        finally:
            self.writers.discard(writer)


@pytest.fixture
def echo(loop_thread: LoopThread):
    started: list[EchoBackend] = []

    def start(name: str) -> EchoBackend:
        backend = EchoBackend(name)
        loop_thread.run(backend.start())
        started.append(backend)
        return backend

    yield start
    for backend in started:
        loop_thread.run(backend.stop())


def tcp_group(*backends, group_id: str = "sgp-tcp", health_check=None):
    servers = []
    for index, item in enumerate(backends):
        backend, weight = item if isinstance(item, tuple) else (item, 100)
        servers.append(
            {"id": f"srv-{index}", "address": "127.0.0.1", "port": backend.port, "weight": weight}
        )
    return {
        "id": group_id,
        "backend_protocol": "tcp",
        "servers": servers,
        "health_check": health_check or {"enabled": False},
    }


def tcp_listener(port: int, **settings):
    return listener(port, listener_id="lsn-tcp", protocol="tcp", group_id="sgp-tcp", **settings)


def serve(dataplane, groups, **settings) -> int:
    port = free_port()
    result = dataplane.apply(snapshot([tcp_listener(port, **settings)], groups))
    assert result["lsn-tcp"]["status"] == "running", result
    return port


def first_answer(port: int, data: bytes = b"hello") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(data)
        return sock.recv(65536)


def test_bytes_flow_both_ways_and_half_close_is_passed_on(dataplane, echo):
    backend = echo("one")
    port = serve(dataplane, [tcp_group(backend)])
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(b"ping")
        assert sock.recv(65536) == b"one:ping"
        sock.shutdown(socket.SHUT_WR)
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
    assert rest == b"bye from one"
    assert bytes(backend.received) == b"ping"


def test_large_transfer_is_intact(dataplane, echo):
    backend = echo("big")
    port = serve(dataplane, [tcp_group(backend)])
    payload = bytes(range(256)) * 32768  # 8 MiB
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        while chunk := sock.recv(1 << 20):
            received += chunk
    assert bytes(backend.received) == payload
    assert received.endswith(b"bye from big")
    assert received.replace(b"big:", b"")[: len(payload)] == payload


def test_weighted_round_robin_per_connection(dataplane, echo):
    heavy, light = echo("heavy"), echo("light")
    port = serve(dataplane, [tcp_group((heavy, 75), (light, 25))])
    counts = collections.Counter(first_answer(port).split(b":")[0] for _ in range(40))
    assert counts == {b"heavy": 30, b"light": 10}


def test_weighted_least_connections_prefers_the_idle_server(dataplane, echo):
    a, b = echo("a"), echo("b")
    port = serve(dataplane, [tcp_group(a, b)], scheduler="weighted_least_connections")
    held = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    held.sendall(b"x")
    busy = held.recv(100).split(b":")[0]
    answers = set()
    for _ in range(5):
        answers.add(first_answer(port).split(b":")[0])
        # Only the held connection stays open; let the dataplane see the others close.
        assert wait_until(lambda: dataplane.stats("lsn-tcp")["active_connections"] == 1)
    held.close()
    assert answers == ({b"a", b"b"} - {busy})


def test_source_ip_persistence_keeps_a_client_on_one_server(dataplane, echo):
    a, b, c = echo("a"), echo("b"), echo("c")
    port = serve(dataplane, [tcp_group(a, b, c)], persistence={"mode": "source_ip"})
    answers = {first_answer(port).split(b":")[0] for _ in range(9)}
    assert len(answers) == 1


def test_dead_server_is_skipped_with_one_retry(dataplane, echo, loop_thread):
    alive, dead = echo("alive"), echo("dead")
    port = serve(dataplane, [tcp_group(dead, alive)])
    loop_thread.run(dead.stop())
    assert {first_answer(port) for _ in range(4)} == {b"alive:hello"}


def test_no_server_closes_the_connection(dataplane, echo):
    drained = echo("drained")
    port = serve(dataplane, [tcp_group((drained, 0))])
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        try:
            sock.sendall(b"hello")
            assert sock.recv(100) == b""
        except ConnectionResetError:
            pass
    assert drained.connections == 0


def test_blacklisted_client_is_refused(dataplane, echo):
    backend = echo("web")
    port = free_port()
    dataplane.apply(
        snapshot(
            [tcp_listener(port, acl={"mode": "blacklist", "acl_id": "acl-local001"})],
            [tcp_group(backend)],
            acls=[{"id": "acl-local001", "entries": ["127.0.0.1/32"]}],
        )
    )
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        try:
            sock.sendall(b"hello")
            assert sock.recv(100) == b""
        except ConnectionResetError:
            pass
    assert backend.connections == 0


def test_idle_connection_is_closed(dataplane, echo):
    backend = echo("web")
    port = serve(dataplane, [tcp_group(backend)], idle_timeout=1)
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(b"hi")
        assert sock.recv(100) == b"web:hi"
        started = time.monotonic()
        assert sock.recv(100) == b""
        assert time.monotonic() - started >= 0.9


def test_counters(dataplane, echo):
    backend = echo("web")
    port = serve(dataplane, [tcp_group(backend)])
    for _ in range(3):
        first_answer(port, b"12345")
    assert wait_until(lambda: dataplane.stats("lsn-tcp")["active_connections"] == 0)
    counters = dataplane.stats("lsn-tcp")
    assert counters["total_connections"] == 3
    assert counters["requests"] == 3
    assert counters["bytes_in"] == 15
    assert counters["bytes_out"] >= 3 * len(b"web:12345")


# -- TCP SSL ---------------------------------------------------------------------------------------


def tls_snapshot(port: int, backend: EchoBackend, ca: trustme.CA, **settings):
    return snapshot(
        [
            listener(
                port,
                listener_id="lsn-tls",
                protocol="tcp_ssl",
                group_id="sgp-tcp",
                default_certificate_id="cert-tcp",
                **settings,
            )
        ],
        [tcp_group(backend)],
        certificates=[certificate_entry("cert-tcp", ca.issue_cert("tcp.example.com"))],
    )


def test_tcp_ssl_terminates_tls_and_forwards_plain_bytes(dataplane, echo, ca):
    backend = echo("plain")
    port = free_port()
    result = dataplane.apply(tls_snapshot(port, backend, ca, tls_policy="tls_cipher_policy_1_2"))
    assert result["lsn-tls"]["status"] == "running"
    client = ssl.create_default_context()
    ca.configure_trust(client)
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
        with client.wrap_socket(raw, server_hostname="tcp.example.com") as tls:
            assert tls.version() == "TLSv1.2"
            tls.sendall(b"secret")
            assert tls.recv(100) == b"plain:secret"
    assert bytes(backend.received) == b"secret"


def test_tcp_ssl_mutual_authentication(dataplane, echo, ca):
    backend = echo("plain")
    port = free_port()
    client_ca = trustme.CA()
    snap = tls_snapshot(port, backend, ca, ca_certificate_id="cert-clientca")
    snap["ca_certificates"] = [
        {"id": "cert-clientca", "certificate_pem": client_ca.cert_pem.bytes().decode()}
    ]
    dataplane.apply(snap)

    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    client_ca.issue_cert("client.example.com").configure_cert(trusted)
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
        with trusted.wrap_socket(raw, server_hostname="tcp.example.com") as tls:
            tls.sendall(b"ok")
            assert tls.recv(100) == b"plain:ok"

    anonymous = ssl.create_default_context()
    ca.configure_trust(anonymous)
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
            with anonymous.wrap_socket(raw, server_hostname="tcp.example.com") as tls:
                tls.sendall(b"no")
                tls.recv(100)
    assert bytes(backend.received) == b"ok"
