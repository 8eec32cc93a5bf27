"""The node's TLS layer (dataplane.protocols.tls_layer) with each record pump, against real TLS
clients: what the codec above it receives, what the client receives, and what is left after
hostile clients."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trustme

from dataplane import tlsrecords
from dataplane.protocols.tls_layer import SslObjectPump, TlsLayer, record_pump
from tests.dataplane.conftest import WAIT, LoopThread, read_until_closed, wait_until
from tests.fixtures.resources import open_fds, rss_kib

PUMPS = {"openssl-from-c": record_pump, "ssl-object": SslObjectPump}


@dataclass
class Codec:
    """What a codec above the layer saw, and what it answers: a connection that begins with
    b"echo:" is echoed in upper case; b"close" makes it answer and close, a read ending in b"pause"
    stop reading."""

    events: list[str] = field(default_factory=list)
    received: bytearray = field(default_factory=bytearray)
    transport: Any = None
    lost: BaseException | None = None
    answer_close: bytes = b"BYE"

    def connection_made(self, transport: Any) -> None:
        self.events.append("made")
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data
        if b"close" in data:
            self.transport.write(self.answer_close)
            self.transport.close()
        elif data.endswith(b"pause"):
            self.transport.pause_reading()
        elif self.received.startswith(b"echo:"):
            self.transport.write(data.upper())

    def eof_received(self) -> None:
        self.events.append("eof")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("lost")
        self.lost = exc

    def pause_writing(self) -> None:
        self.events.append("pause_writing")

    def resume_writing(self) -> None:
        self.events.append("resume_writing")


@dataclass
class Server:
    port: int
    codecs: list[Codec]
    thread: LoopThread


@pytest.fixture(scope="module")
def certificate() -> trustme.LeafCert:
    return trustme.CA().issue_cert("tls.example.test")


def server_context(leaf: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(context)
    return context


def client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.fixture(params=sorted(PUMPS))
def server(request, loop_thread: LoopThread, certificate) -> Iterator[Server]:
    make_pump = PUMPS[request.param]
    codecs: list[Codec] = []
    context = server_context(certificate)

    def accept() -> TlsLayer:
        codec = Codec()
        codecs.append(codec)
        return TlsLayer(context, codec, 0.5, make_pump)

    async def start() -> asyncio.AbstractServer:
        return await asyncio.get_running_loop().create_server(accept, "127.0.0.1", 0)

    listening = loop_thread.run(start())
    port = listening.sockets[0].getsockname()[1]
    yield Server(port, codecs, loop_thread)
    listening.close()


def connect(port: int) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    return client_context().wrap_socket(raw)


def read_exactly(sock: ssl.SSLSocket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def test_the_pump_in_c_is_usable_on_this_python():
    # Otherwise every listener silently runs the slower pump.
    assert tlsrecords.usable


def test_records_both_ways_reach_the_codec_and_the_client_whole(server):
    payload = b"echo:" + os.urandom(300_000).hex().encode()
    with connect(server.port) as client:
        client.sendall(payload)
        answer = read_exactly(client, len(payload))
    assert answer == payload.upper()
    codec = server.codecs[0]
    assert wait_until(lambda: codec.events[-1:] == ["lost"])
    assert bytes(codec.received) == payload
    assert codec.events[0] == "made"


def test_a_client_close_notify_reaches_the_codec_as_eof_and_is_answered(server):
    client = connect(server.port)
    client.sendall(b"echo:one")
    assert read_exactly(client, 8) == b"ECHO:ONE"
    raw = client.unwrap()  # our close_notify; returns once the node's has been read
    assert raw.recv(10) == b""
    raw.close()
    codec = server.codecs[0]
    assert wait_until(lambda: codec.events == ["made", "eof", "lost"])
    assert codec.lost is None


def test_a_bare_tcp_close_after_the_handshake_is_eof_then_lost(server):
    client = connect(server.port)
    client.sendall(b"echo:x")
    assert read_exactly(client, 6) == b"ECHO:X"
    client.close()
    codec = server.codecs[0]
    assert wait_until(lambda: codec.events == ["made", "eof", "lost"])


@pytest.mark.parametrize(
    "record",
    [
        # Application data whose authentication tag cannot be right.
        pytest.param(b"\x17\x03\x03\x00\x20" + b"\x00" * 32, id="forged"),
        # Longer than any TLS record may be (RFC 8446 5.2: 2^14 + 256).
        pytest.param(b"\x17\x03\x03\xff\xff" + b"\x00" * 65535, id="oversized"),
        # A second ClientHello in the clear once TLS 1.3 has finished its handshake.
        pytest.param(b"\x16\x03\x03\x00\x04\x01\x00\x00\x00", id="handshake-again"),
    ],
)
def test_a_bad_record_ends_the_session_with_an_error(server, record):
    client = connect(server.port)
    client.sendall(b"echo:ok")
    assert read_exactly(client, 7) == b"ECHO:OK"
    raw = socket.socket(fileno=os.dup(client.fileno()))
    raw.sendall(record)
    codec = server.codecs[0]
    assert wait_until(lambda: "lost" in codec.events)
    assert isinstance(codec.lost, ssl.SSLError)
    raw.close()
    client.close()


def test_what_the_codec_sends_as_it_closes_reaches_a_client_still_sending(server):
    # A socket closed with unread input sends a reset and drops what it had not sent yet. The
    # layer's lingering close sends its FIN after the answer and reads the client's flood away.
    answer = b"B" * (4 << 20)
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32_768)
    raw.settimeout(WAIT)
    raw.connect(("127.0.0.1", server.port))
    client = client_context().wrap_socket(raw)
    assert wait_until(lambda: len(server.codecs) == 1)
    server.codecs[0].answer_close = answer
    client.sendall(b"x" * 200_000 + b"close")
    client.settimeout(0.2)
    try:
        for _ in range(50):
            client.sendall(b"y" * 16_384)
    except (TimeoutError, OSError):
        pass
    client.settimeout(WAIT)
    received = read_exactly(client, len(answer))
    assert received == answer
    client.close()


def test_paused_reading_holds_records_back_until_resumed(server):
    client = connect(server.port)
    client.sendall(b"echo:hold-pause")
    codec = server.codecs[0]
    assert wait_until(lambda: bytes(codec.received) == b"echo:hold-pause")
    client.sendall(b"echo:later")
    time.sleep(0.2)
    assert bytes(codec.received) == b"echo:hold-pause"
    server.thread.call(codec.transport.resume_reading)
    assert read_exactly(client, 10) == b"ECHO:LATER"
    client.close()


def test_a_silent_client_is_cut_off_at_the_handshake_timeout(server):
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    started = time.monotonic()
    assert raw.recv(10) == b""
    assert time.monotonic() - started < WAIT
    raw.close()
    assert server.codecs[0].events == []


def test_plain_http_on_the_tls_port_is_closed_and_never_reaches_the_codec(server):
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    started = time.monotonic()
    read_until_closed(raw)
    assert time.monotonic() - started < 0.5  # the handshake timeout would take 0.5 s
    raw.close()
    assert server.codecs[0].events == []


def test_abandoned_and_hostile_clients_leave_no_descriptor_or_memory_behind(server):
    server.thread.call(gc.collect)
    before, rss_before = open_fds(), rss_kib()
    for round_ in range(200):
        client = connect(server.port)
        kind = round_ % 4
        if kind == 0:
            client.sendall(b"echo:" + b"z" * 5000)
            client.close()  # the answer unread
        elif kind == 1:
            raw = socket.socket(fileno=os.dup(client.fileno()))
            raw.sendall(b"\x17\x03\x03\x01\x00" + b"\x01" * 100)  # half a record, then gone
            raw.close()
            client.close()
        elif kind == 2:
            raw = socket.socket(fileno=os.dup(client.fileno()))
            raw.sendall(b"\x15\x03\x03\x00\x02\x02\x28")  # a cleartext alert mid-session
            raw.close()
            client.close()
        else:
            client.sendall(b"close")
            client.close()
        half_open = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
        half_open.sendall(b"\x16\x03\x01\x02\x00\x01")  # a ClientHello that never ends
        half_open.close()
    # Every codec that was made has been told its connection is gone.
    assert wait_until(
        lambda: all(codec.events[-1:] == ["lost"] for codec in server.codecs if codec.events)
    )
    assert wait_until(lambda: open_fds() <= before + 2)
    # 400 connections: a leak of 25 KiB each would show.
    server.thread.call(gc.collect)
    assert rss_kib() - rss_before < 10_000
