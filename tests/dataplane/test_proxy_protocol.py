"""Client IP preservation for TCP and TCP SSL listeners: the PROXY protocol v1/v2 header, built
by dataplane.proxy_protocol and checked by a recording TCP backend that parses it (the parser
here is written from the haproxy specification, independently of the builder)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from dataclasses import dataclass

import pytest

from dataplane.config import ConfigError, Snapshot
from dataplane.proxy_protocol import ProxyHeader
from tests.dataplane.conftest import (
    WAIT,
    certificate_entry,
    listener,
    snapshot,
    unverified_client,
    wait_until,
)
from tests.fixtures.ports import free_port

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


@dataclass
class Proxied:
    version: str
    family: str
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    payload: bytes


def parse(data: bytes) -> tuple[Proxied, bytes]:
    """One PROXY header at the start of `data`, and the bytes after it."""
    if data.startswith(b"PROXY "):
        line, _, rest = data.partition(b"\r\n")
        fields = line.decode("ascii").split(" ")
        if fields[1] == "UNKNOWN":
            return Proxied("v1", "UNKNOWN", None, None, rest), rest
        assert len(fields) == 6, line
        _, family, src, dst, sport, dport = fields
        return Proxied("v1", family, (src, int(sport)), (dst, int(dport)), rest), rest
    assert data[:12] == SIGNATURE, data[:16]
    ver_cmd, fam, length = struct.unpack("!BBH", data[12:16])
    assert ver_cmd >> 4 == 2
    block, rest = data[16 : 16 + length], data[16 + length :]
    if ver_cmd & 0xF == 0:
        return Proxied("v2", "LOCAL", None, None, rest), rest
    size = {0x11: 4, 0x21: 16}[fam]
    src = ipaddress.ip_address(block[:size])
    dst = ipaddress.ip_address(block[size : 2 * size])
    sport, dport = struct.unpack("!HH", block[2 * size : 2 * size + 4])
    family = "TCP4" if fam == 0x11 else "TCP6"
    return Proxied("v2", family, (str(src), sport), (str(dst), dport), rest), rest


# -- the header ------------------------------------------------------------------------------------


def test_v1_ipv4():
    header = ProxyHeader("v1").build(("192.0.2.10", 51000), ("198.51.100.1", 443))
    assert header == b"PROXY TCP4 192.0.2.10 198.51.100.1 51000 443\r\n"


def test_v1_ipv6_and_unknown():
    header = ProxyHeader("v1").build(("2001:db8::1", 40000, 0, 0), ("2001:db8::2", 80, 0, 0))
    assert header == b"PROXY TCP6 2001:db8::1 2001:db8::2 40000 80\r\n"
    assert ProxyHeader("v1").build(None, ("127.0.0.1", 80)) == b"PROXY UNKNOWN\r\n"


def test_v1_longest_line_fits_the_limit():
    header = ProxyHeader("v1").build(
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
        ("ffff:f:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
    )
    assert len(header) <= 107


def test_v2_ipv4_bytes():
    header = ProxyHeader("v2").build(("192.0.2.10", 51000), ("198.51.100.1", 443))
    assert header == (
        SIGNATURE
        + b"\x21\x11\x00\x0c"
        + bytes([192, 0, 2, 10, 198, 51, 100, 1])
        + struct.pack("!HH", 51000, 443)
    )


def test_v2_ipv6_and_local():
    header = ProxyHeader("v2").build(("2001:db8::1", 40000, 0, 0), ("2001:db8::2", 80, 0, 0))
    proxied, rest = parse(header + b"x")
    assert (proxied.family, proxied.source, proxied.destination, rest) == (
        "TCP6",
        ("2001:db8::1", 40000),
        ("2001:db8::2", 80),
        b"x",
    )
    assert len(header) == 16 + 36
    assert ProxyHeader("v2").build(("not an ip", 1), ("127.0.0.1", 80)) == (
        SIGNATURE + b"\x20\x00\x00\x00"
    )


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_ipv4_mapped_addresses_are_sent_as_ipv4(version):
    header = ProxyHeader(version).build(
        ("::ffff:10.0.0.1", 1000, 0, 0), ("::ffff:10.0.0.2", 80, 0, 0)
    )
    proxied, _ = parse(header)
    assert (proxied.family, proxied.source, proxied.destination) == (
        "TCP4",
        ("10.0.0.1", 1000),
        ("10.0.0.2", 80),
    )


def test_mixed_families_go_as_ipv6():
    proxied, _ = parse(ProxyHeader("v2").build(("10.0.0.1", 1000), ("2001:db8::2", 80)))
    assert proxied.family == "TCP6"
    assert proxied.source == ("::ffff:a00:1", 1000)


def test_unknown_version_is_refused():
    with pytest.raises(ValueError, match="PROXY protocol version"):
        ProxyHeader("v3")


# -- through a node --------------------------------------------------------------------------------


class RecordingTcpBackend:
    """Reads what each connection sends first, parses the PROXY header and echoes the rest."""

    def __init__(self) -> None:
        self.received: list[Proxied] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = b""
            # The header and the client's "hello\n" arrive in whatever pieces TCP makes.
            while not data.endswith(b"hello\n"):
                chunk = await asyncio.wait_for(reader.read(4096), WAIT)
                if not chunk:
                    return
                data += chunk
            proxied, rest = parse(data)
            self.received.append(proxied)
            writer.write(b"echo:" + rest)
            await writer.drain()
        finally:
            writer.close()


@pytest.fixture
def tcp_backend(loop_thread):
    backend = RecordingTcpBackend()
    loop_thread.run(backend.start())
    yield backend
    loop_thread.run(backend.stop())


def tcp_group(backend: RecordingTcpBackend) -> dict:
    return {
        "id": "sgp-tcp",
        "backend_protocol": "tcp",
        "servers": [{"id": "srv-1", "address": "127.0.0.1", "port": backend.port}],
        "health_check": {"enabled": False},
    }


def exchange(sock: socket.socket) -> bytes:
    sock.sendall(b"hello\n")
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_tcp_listener_sends_the_client_and_listener_addresses(dataplane, tcp_backend, version):
    port = free_port()
    dataplane.apply(
        snapshot(
            [listener(port, protocol="tcp", group_id="sgp-tcp", proxy_protocol=version)],
            [tcp_group(tcp_backend)],
        )
    )
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        client_port = sock.getsockname()[1]
        assert exchange(sock) == b"echo:hello\n"
    assert wait_until(lambda: len(tcp_backend.received) == 1)
    proxied = tcp_backend.received[0]
    assert proxied.version == version
    assert proxied.family == "TCP4"
    assert proxied.source == ("127.0.0.1", client_port)
    assert proxied.destination == ("127.0.0.1", port)
    assert proxied.payload == b"hello\n"


def test_tcp_ssl_listener_sends_the_header_before_the_decrypted_bytes(dataplane, tcp_backend, ca):
    port = free_port()
    dataplane.apply(
        snapshot(
            [
                listener(
                    port,
                    protocol="tcp_ssl",
                    group_id="sgp-tcp",
                    proxy_protocol="v2",
                    default_certificate_id="cert-www",
                )
            ],
            [tcp_group(tcp_backend)],
            certificates=[certificate_entry("cert-www", ca.issue_cert("www.example.com"))],
        )
    )
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
        client_port = raw.getsockname()[1]
        with unverified_client().wrap_socket(raw, server_hostname="www.example.com") as tls:
            assert exchange(tls) == b"echo:hello\n"
    assert wait_until(lambda: len(tcp_backend.received) == 1)
    proxied = tcp_backend.received[0]
    assert (proxied.version, proxied.source, proxied.destination) == (
        "v2",
        ("127.0.0.1", client_port),
        ("127.0.0.1", port),
    )


def test_off_sends_no_header(dataplane, loop_thread):
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await asyncio.wait_for(reader.readexactly(6), WAIT))
        writer.close()

    server = loop_thread.run(asyncio.start_server(serve, "127.0.0.1", 0))
    backend_port = server.sockets[0].getsockname()[1]
    port = free_port()
    group = tcp_group(RecordingTcpBackend())
    group["servers"][0]["port"] = backend_port
    dataplane.apply(snapshot([listener(port, protocol="tcp", group_id="sgp-tcp")], [group]))
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        exchange(sock)
    assert wait_until(lambda: seen == [b"hello\n"])
    loop_thread.call(server.close)


def test_proxy_protocol_is_for_tcp_and_tcp_ssl_only():
    raw = {
        "instance_id": "lb-test0001",
        "generation": 1,
        "server_groups": [{"id": "sgp-web"}],
        "listeners": [
            {
                "id": "lsn-a",
                "protocol": "http",
                "port": 80,
                "server_group_id": "sgp-web",
                "proxy_protocol": "v1",
            },
            {"id": "lsn-b", "protocol": "tcp", "port": 81, "proxy_protocol": "v3"},
        ],
    }
    with pytest.raises(ConfigError) as info:
        Snapshot.from_dict(raw)
    assert info.value.reasons == [
        "listeners[0].proxy_protocol: only tcp and tcp_ssl listeners send it",
        "listeners[1].proxy_protocol: 'v3' is not one of off, v1, v2",
    ]
