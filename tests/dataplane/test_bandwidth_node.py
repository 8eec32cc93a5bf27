"""Seed 000 bandwidth throttling through a real node: measured throughput to real clients stays
within 10% of the listener's limit, for HTTP and TCP, and connections share the limit."""

from __future__ import annotations

import asyncio
import http.client
import socket
import threading
import time

import pytest

from tests.dataplane.conftest import (
    WAIT,
    Reply,
    listener,
    server_group,
    snapshot,
)
from tests.fixtures.ports import free_port

LIMIT_MBIT = 8  # 1,000,000 bytes per second
LIMIT_BYTES = LIMIT_MBIT * 1_000_000 / 8
BODY = 1_500_000
# The first bytes are the bucket's burst; the rate is measured over what follows.
SKIP = 200_000


def measure(read) -> float:
    """Bytes per second over everything after the first SKIP bytes; read(n) returns bytes."""
    received = 0
    mark_time = None
    mark_bytes = 0
    while True:
        chunk = read(65536)
        if not chunk:
            break
        received += len(chunk)
        if mark_time is None and received >= SKIP:
            mark_time, mark_bytes = time.monotonic(), received
    assert mark_time is not None
    return (received - mark_bytes) / (time.monotonic() - mark_time)


def test_http_download_stays_within_ten_percent_of_the_limit(dataplane, backends):
    app = backends("app", lambda request: Reply(body=b"x" * BODY))
    port = free_port()
    dataplane.apply(
        snapshot(
            [listener(port, bandwidth_mbit=LIMIT_MBIT)],
            [server_group(app)],
            bandwidth_mbit=100,
        )
    )
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        rate = measure(response.read1)
    finally:
        connection.close()
    assert rate == pytest.approx(LIMIT_BYTES, rel=0.10)
    assert dataplane.stats("lsn-web")["bytes_out"] > BODY


def test_connections_share_the_listener_limit(dataplane, backends):
    app = backends("app", lambda request: Reply(body=b"y" * BODY))
    port = free_port()
    dataplane.apply(snapshot([listener(port, bandwidth_mbit=LIMIT_MBIT)], [server_group(app)]))
    totals: list[tuple[float, float, int]] = []

    def download() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        try:
            connection.request("GET", "/")
            response = connection.getresponse()
            started = time.monotonic()
            size = len(response.read())
            totals.append((started, time.monotonic(), size))
        finally:
            connection.close()

    threads = [threading.Thread(target=download) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 2)
    assert len(totals) == 2
    elapsed = max(end for _, end, _ in totals) - min(start for start, _, _ in totals)
    rate = sum(size for _, _, size in totals) / elapsed
    # Two connections together get the listener's rate (plus at most one burst), not twice it.
    assert LIMIT_BYTES * 0.9 < rate < LIMIT_BYTES * 1.15


class Source:
    """A TCP server that sends BODY bytes to each connection and closes."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.name = "source"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"z" * BODY)
        await writer.drain()
        writer.close()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]


def test_tcp_download_stays_within_ten_percent_of_the_limit(dataplane, loop_thread):
    source = Source()
    loop_thread.run(source.start())
    port = free_port()
    try:
        dataplane.apply(
            snapshot(
                [listener(port, protocol="tcp", bandwidth_mbit=LIMIT_MBIT)],
                [server_group(source, protocol="tcp")],  # type: ignore[arg-type]
            )
        )
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            rate = measure(sock.recv)
        assert rate == pytest.approx(LIMIT_BYTES, rel=0.10)
    finally:
        loop_thread.loop.call_soon_threadsafe(source.server.close)  # type: ignore[union-attr]


def apply_pair(
    dataplane, app, ports: tuple[int, int], limit_a: int, instance_mbit: int, generation: int
) -> dict:
    """Listener lsn-a with a limit and lsn-b without one, on an instance with a bandwidth."""
    return dataplane.apply(
        snapshot(
            [
                listener(ports[0], listener_id="lsn-a", bandwidth_mbit=limit_a),
                listener(ports[1], listener_id="lsn-b"),
            ],
            [server_group(app)],
            bandwidth_mbit=instance_mbit,
            generation=generation,
        )
    )


def test_a_listener_left_no_share_of_the_instance_is_inaccessible(dataplane, backends):
    """Seed 000: "you allocate 5 Mbit/s to Listener A and none to Listener B: B is
    inaccessible". Lowering A's limit gives B its share back."""
    app = backends("app")
    port_a, port_b = free_port(), free_port()

    def apply(limit_a: int, generation: int) -> dict:
        return apply_pair(dataplane, app, (port_a, port_b), limit_a, 5, generation)

    result = apply(5, 1)
    assert result["lsn-a"]["status"] == "running"
    assert result["lsn-b"]["status"] == "failed"
    assert "inaccessible" in result["lsn-b"]["reason"]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port_b), timeout=2).close()

    result = apply(4, 2)
    assert result["lsn-b"]["status"] == "running"
    connection = http.client.HTTPConnection("127.0.0.1", port_b, timeout=WAIT)
    connection.request("GET", "/")
    assert connection.getresponse().status == 200
    connection.close()
