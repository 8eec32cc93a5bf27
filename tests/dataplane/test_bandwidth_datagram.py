"""Seed 000 bandwidth on UDP and QUIC listeners, the instance remainder shared by listeners
without a limit, and each worker's part of a limit, all measured with real clients.

UDP replies beyond the limit are policed (dropped), so a backend sending twice the limit reaches
the client at the limit. HTTP/3 bodies are shaped at the source, so a large download arrives at
the limit. Measurements skip the first bytes, which the bucket's burst lets through at once.
"""

from __future__ import annotations

import asyncio
import http.client
import socket
import threading
import time

import pytest
from aioquic.asyncio.client import connect as quic_connect
from aioquic.h3.connection import H3_ALPN
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration

from dataplane.bandwidth import mbit_to_bytes_per_s
from dataplane.config import Snapshot
from dataplane.node import Node
from tests.dataplane.conftest import (
    WAIT,
    Reply,
    certificate_entry,
    listener,
    server_group,
    snapshot,
)
from tests.dataplane.test_bandwidth_node import BODY, apply_pair, measure
from tests.dataplane.test_quic import H3Client
from tests.fixtures.ports import free_port

LIMIT_MBIT = 8
LIMIT_BYTES = mbit_to_bytes_per_s(LIMIT_MBIT)  # 1,000,000 bytes per second
SKIP = 200_000
DATAGRAM = 1200


def rate_after(arrivals: list[tuple[float, int]], skip: int) -> float:
    """Bytes per second from the arrival that passed `skip` bytes to the last arrival."""
    start, start_bytes = next((when, size) for when, size in arrivals if size >= skip)
    end, total = arrivals[-1]
    return (total - start_bytes) / (end - start)


# -- UDP -------------------------------------------------------------------------------------------


class Blaster:
    """A UDP server that answers a client's first datagram with `seconds` of replies at `rate`
    bytes per second, paced in 5 ms batches from its own thread."""

    def __init__(self, rate: float, seconds: float) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(WAIT)
        self.port = self.sock.getsockname()[1]
        self.name = "blaster"
        self.rate = rate
        self.seconds = seconds
        self.sent = 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        try:
            _, peer = self.sock.recvfrom(65536)
        except OSError:
            return
        payload = b"u" * DATAGRAM
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < self.seconds:
            due = int(elapsed * self.rate) - self.sent
            while due >= DATAGRAM:
                self.sock.sendto(payload, peer)
                self.sent += DATAGRAM
                due -= DATAGRAM
            time.sleep(0.005)

    def close(self) -> None:
        self.thread.join(WAIT)
        self.sock.close()


def test_udp_replies_stay_within_ten_percent_of_the_limit(dataplane):
    blaster = Blaster(rate=2 * LIMIT_BYTES, seconds=3.0)
    port = free_port()
    try:
        result = dataplane.apply(
            snapshot(
                [listener(port, protocol="udp", listener_id="lsn-udp", bandwidth_mbit=LIMIT_MBIT)],
                [server_group(blaster, protocol="udp")],  # type: ignore[arg-type]
            )
        )
        assert result["lsn-udp"]["status"] == "running"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            client.settimeout(1.0)
            client.sendto(b"go", ("127.0.0.1", port))

            arrivals = []
            received = 0
            while True:
                try:
                    received += len(client.recv(65536))
                except TimeoutError:
                    break  # the blaster has stopped
                arrivals.append((time.monotonic(), received))
        rate = rate_after(arrivals, SKIP)
        counters = dataplane.status()["listeners"]["lsn-udp"]["udp"]
    finally:
        blaster.close()
    assert rate == pytest.approx(LIMIT_BYTES, rel=0.10)
    # The backend sent twice the limit: the listener itself dropped about half of the replies.
    assert counters["throttled"] == pytest.approx(counters["datagrams_out"], rel=0.25)


# -- QUIC ------------------------------------------------------------------------------------------

SERVER_NAME = "quic.example"
QUIC_BODY = 2_500_000


class TimedH3Client(H3Client):
    """Records when stream bytes arrived: (monotonic time, bytes so far). HTTP/3 framing is a
    few bytes per DATA frame, too little to matter for a rate."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.arrivals: list[tuple[float, int]] = []
        self.received = 0

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived) and event.data:
            self.received += len(event.data)
            self.arrivals.append((time.monotonic(), self.received))
        super().quic_event_received(event)


def quic_download_rate(ca, port: int) -> float:
    async def run() -> float:
        configuration = QuicConfiguration(
            is_client=True,
            alpn_protocols=list(H3_ALPN),
            server_name=SERVER_NAME,
            idle_timeout=WAIT,
        )
        configuration.load_verify_locations(cadata=ca.cert_pem.bytes())
        async with asyncio.timeout(WAIT * 2):
            async with quic_connect(
                "127.0.0.1", port, configuration=configuration, create_protocol=TimedH3Client
            ) as client:
                status, _, body = await client.request(b"GET", b"/")  # type: ignore[attr-defined]
                assert (status, len(body)) == (200, QUIC_BODY)
        return rate_after(client.arrivals, SKIP)  # type: ignore[attr-defined]

    return asyncio.run(run())


def test_quic_download_stays_within_ten_percent_of_the_limit(dataplane, backends, ca):
    app = backends("app", lambda request: Reply(body=b"q" * QUIC_BODY))
    port = free_port()
    result = dataplane.apply(
        snapshot(
            [
                listener(
                    port,
                    protocol="quic",
                    listener_id="lsn-quic",
                    default_certificate_id="cert-quic",
                    bandwidth_mbit=LIMIT_MBIT,
                )
            ],
            [server_group(app)],
            certificates=[certificate_entry("cert-quic", ca.issue_cert(SERVER_NAME))],
        )
    )
    assert result["lsn-quic"]["status"] == "running"
    rate = quic_download_rate(ca, port)
    assert rate == pytest.approx(LIMIT_BYTES, rel=0.10)


# -- the instance remainder and worker parts -------------------------------------------------------


def http_download_rate(port: int) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        return measure(response.read1)
    finally:
        connection.close()


def test_listeners_without_a_limit_share_what_the_others_leave(dataplane, backends):
    """Seed 000: "all listeners share the bandwidth of the CLB instance". An instance of 16 Mbit/s
    with one listener limited to 8 leaves 8 to the other; raising the limit to 12 leaves 4, and
    the running listener follows without a restart."""
    app = backends("app", lambda request: Reply(body=b"r" * BODY))
    port_a, port_b = free_port(), free_port()

    def apply(limit_a: int, generation: int) -> dict:
        return apply_pair(dataplane, app, (port_a, port_b), limit_a, 16, generation)

    apply(8, 1)
    assert http_download_rate(port_b) == pytest.approx(mbit_to_bytes_per_s(8), rel=0.10)
    settings_before = dataplane.node.listeners["lsn-b"].settings

    apply(12, 2)
    assert dataplane.node.listeners["lsn-b"].settings is settings_before  # not restarted
    assert http_download_rate(port_b) == pytest.approx(mbit_to_bytes_per_s(4), rel=0.10)


def test_without_an_instance_bandwidth_a_listener_without_a_limit_is_not_throttled(
    dataplane, backends
):
    app = backends("app")
    port = free_port()
    dataplane.apply(snapshot([listener(port)], [server_group(app)]))
    assert dataplane.node.shared_bucket is None
    assert dataplane.node.listeners["lsn-web"].bucket is None


def test_a_worker_enforces_its_part_of_the_limit(loop_thread, backends):
    """With --workers 2 each worker keeps to half of every limit, so together they keep to it."""
    node = loop_thread.call(lambda: Node(bandwidth_share=0.5))
    app = backends("app", lambda request: Reply(body=b"w" * BODY))
    port = free_port()
    try:
        loop_thread.run(
            node.apply(
                Snapshot.from_dict(
                    snapshot([listener(port, bandwidth_mbit=16)], [server_group(app)])
                )
            )
        )
        assert http_download_rate(port) == pytest.approx(mbit_to_bytes_per_s(8), rel=0.10)
    finally:
        loop_thread.run(node.shutdown(0))


@pytest.mark.parametrize("share", [0.0, -1.0, 1.5])
def test_a_bandwidth_share_outside_zero_to_one_is_refused(share):
    with pytest.raises(ValueError, match="bandwidth share"):
        Node(bandwidth_share=share)
