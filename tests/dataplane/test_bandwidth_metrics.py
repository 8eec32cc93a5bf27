"""What a bandwidth limit costs stream listeners, in `/v1/status` and `/metrics` (issue 18): the
limit, how often the listener's bucket paused a connection and for how long. Real downloads through
a real node (HTTP and TCP), scraped over the control API and read with prometheus_client's own
parser; the counting itself with a fake clock; the supervisor's sum over workers."""

from __future__ import annotations

import asyncio
import http.client
import socket

import pytest

from dataplane.bandwidth import ThrottledWriter, TokenBucket, pay
from dataplane.workers import _merge_listeners
from tests.dataplane.conftest import WAIT, Reply, listener, server_group, snapshot
from tests.dataplane.test_bandwidth import FakeClock, FakeLoop, RecordingTransport
from tests.dataplane.test_metrics import _samples, _scrape, _value, control  # noqa: F401
from tests.fixtures.ports import free_port

LIMIT_MBIT = 1
LIMIT_BYTES = LIMIT_MBIT * 1_000_000 / 8  # 125,000 bytes per second
# About 2.4 seconds of the limit: the burst goes at once, the rest only through pauses.
BODY = 300_000
FAMILIES = (
    "ferry_listener_bandwidth_limit_bytes_per_second",
    "ferry_listener_bandwidth_throttled_total",
    "ferry_listener_bandwidth_throttled_seconds_total",
)


def _download(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        connection.request("GET", "/")
        return len(connection.getresponse().read())
    finally:
        connection.close()


def _labels(listener_id: str, protocol: str, port: int) -> dict[str, str]:
    return {"listener": listener_id, "protocol": protocol, "port": str(port)}


def test_http_listener_reports_its_limit_and_the_pauses_it_cost(control, backends, dataplane):  # noqa: F811
    app = backends("app", lambda request: Reply(body=b"x" * BODY))
    slow, fast = free_port(), free_port()
    dataplane.apply(
        snapshot(
            [
                listener(slow, listener_id="lsn-slow", bandwidth_mbit=LIMIT_MBIT),
                listener(fast, listener_id="lsn-fast"),
            ],
            [server_group(app)],
        )
    )

    assert _download(fast) == BODY
    assert _download(slow) == BODY

    samples = _samples(_scrape(control.port)[2])
    labels = _labels("lsn-slow", "http", slow)
    assert _value(samples, "ferry_listener_bandwidth_limit_bytes_per_second", **labels) == (
        LIMIT_BYTES
    )
    assert _value(samples, "ferry_listener_bandwidth_throttled_total", **labels) > 0
    assert _value(samples, "ferry_listener_bandwidth_throttled_seconds_total", **labels) > 0
    # A listener without a limit (and no instance bandwidth to share) has no bucket: no series.
    unlimited = frozenset(_labels("lsn-fast", "http", fast).items())
    assert not [key for key in samples if key[0] in FAMILIES and key[1] == unlimited]

    status = dataplane.status()["listeners"]
    bandwidth = status["lsn-slow"]["bandwidth"]
    assert bandwidth["limit_bytes_per_second"] == LIMIT_BYTES
    assert bandwidth["shared"] is False
    assert bandwidth["pauses"] > 0
    assert bandwidth["paused_seconds"] > 0
    assert "bandwidth" not in status["lsn-fast"]


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


def test_tcp_listener_reports_its_limit_and_the_pauses_it_cost(control, dataplane, loop_thread):  # noqa: F811
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
        received = 0
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            while chunk := sock.recv(65536):
                received += len(chunk)
        assert received == BODY

        samples = _samples(_scrape(control.port)[2])
    finally:
        loop_thread.loop.call_soon_threadsafe(source.server.close)  # type: ignore[union-attr]
    labels = _labels("lsn-web", "tcp", port)
    assert _value(samples, "ferry_listener_bandwidth_limit_bytes_per_second", **labels) == (
        LIMIT_BYTES
    )
    assert _value(samples, "ferry_listener_bandwidth_throttled_total", **labels) > 0
    assert _value(samples, "ferry_listener_bandwidth_throttled_seconds_total", **labels) > 0


def test_listeners_without_a_limit_show_the_instance_remainder_they_share(
    control,  # noqa: F811
    backends,
    dataplane,
):
    app = backends("app")
    port_a, port_b = free_port(), free_port()
    dataplane.apply(
        snapshot(
            [
                listener(port_a, listener_id="lsn-a", bandwidth_mbit=1),
                listener(port_b, listener_id="lsn-b"),
            ],
            [server_group(app)],
            bandwidth_mbit=3,
        )
    )

    status = dataplane.status()["listeners"]
    assert status["lsn-a"]["bandwidth"] == {
        "limit_bytes_per_second": 125_000,
        "shared": False,
        "pauses": 0,
        "paused_seconds": 0,
    }
    assert status["lsn-b"]["bandwidth"]["limit_bytes_per_second"] == 250_000
    assert status["lsn-b"]["bandwidth"]["shared"] is True
    samples = _samples(_scrape(control.port)[2])
    labels = _labels("lsn-b", "http", port_b)
    assert _value(samples, "ferry_listener_bandwidth_limit_bytes_per_second", **labels) == 250_000
    assert _value(samples, "ferry_listener_bandwidth_throttled_total", **labels) == 0


# -- the counting, with a fake clock -------------------------------------------------------------


def test_writes_within_budget_count_nothing_and_a_pause_counts_once_with_its_length():
    clock = FakeClock()
    bucket = TokenBucket(1000, 500, clock=clock)
    loop = FakeLoop()
    writer = ThrottledWriter(
        RecordingTransport().write,
        bucket,
        pause_reading=lambda: None,
        resume_reading=lambda: None,
        loop=loop,  # type: ignore[arg-type]
    )

    writer.write(b"a" * 200)
    writer.write(b"b" * 100)
    writer.write(b"c" * 200)
    assert (bucket.pauses, bucket.paused_seconds) == (0, 0.0)

    writer.write(b"x" * 300)  # 300 bytes of debt: 0.3 s
    writer.write(b"y" * 100)  # more debt while paused: the same pause
    assert bucket.pauses == 1
    clock.advance(0.3)
    loop.timers[0].callback()  # 100 bytes still owed: timer set again
    assert bucket.paused_seconds == 0.0
    clock.advance(0.1)
    loop.timers[1].callback()
    assert bucket.pauses == 1
    assert bucket.paused_seconds == pytest.approx(0.4)

    writer.write(b"z" * 600)  # a second pause, cut short by the connection closing
    clock.advance(0.05)
    writer.close()
    assert bucket.pauses == 2
    assert bucket.paused_seconds == pytest.approx(0.45)


def test_pay_counts_a_wait_and_not_a_payment_within_budget():
    bucket = TokenBucket(10_000, 100)

    async def main() -> None:
        await pay(bucket, 50)
        assert bucket.pauses == 0
        await pay(bucket, 250)  # 200 bytes of debt: 0.02 s
        assert bucket.pauses == 1
        assert bucket.paused_seconds > 0

    asyncio.run(main())


# -- the supervisor's sum over workers -----------------------------------------------------------


def test_workers_bandwidth_adds_up_to_the_listener_limit():
    def report(pauses: int, seconds: float) -> dict:
        return {
            "listeners": {
                "lsn-web": {
                    "status": "running",
                    "reason": "",
                    "counters": {"responses": {}},
                    "backends": [],
                    "bandwidth": {
                        "limit_bytes_per_second": 125_000 / 3,
                        "shared": False,
                        "pauses": pauses,
                        "paused_seconds": seconds,
                    },
                }
            }
        }

    merged = _merge_listeners([report(2, 0.5), report(3, 0.25), report(0, 0.0)])["lsn-web"]

    assert merged["bandwidth"] == {
        "limit_bytes_per_second": 125_000,
        "shared": False,
        "pauses": 5,
        "paused_seconds": 0.75,
    }
