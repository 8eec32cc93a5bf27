"""GET /metrics after known traffic on the listeners test_metrics.py leaves out: TCP and UDP
listeners (connections and sessions, bytes, per-server counts), UDP datagrams dropped by a
bandwidth limit, a server's active connections while a request is on it, and the access-log
lines a node could not write. Real clients and backends on loopback, scraped over the control
API and read with prometheus_client's own parser."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from dataplane.accesslog import AccessLogWriter
from dataplane.control import ControlApi
from dataplane.node import Node
from tests.dataplane.conftest import (
    WAIT,
    Reply,
    get,
    listener,
    raw_exchange,
    server_group,
    snapshot,
    wait_until,
)
from tests.dataplane.test_control import TOKEN, ControlClient
from tests.dataplane.test_datagram_node import udp_client, udp_echoes, udp_group  # noqa: F401
from tests.dataplane.test_metrics import _samples, _scrape, _value, control  # noqa: F401
from tests.fixtures.ports import free_port, free_udp_port


def _server(listener_id: str, group: str, server: str, port: int) -> dict[str, str]:
    return {
        "listener": listener_id,
        "server_group": group,
        "server": server,
        "address": f"127.0.0.1:{port}",
    }


def test_tcp_listener_counts_connections_bytes_and_its_server(control, backends, dataplane):  # noqa: F811
    web = backends("web", lambda request: Reply(body=b"over tcp", close=True))
    port = free_port()
    dataplane.apply(snapshot([listener(port, protocol="tcp")], [server_group(web, protocol="tcp")]))
    sent = received = 0
    for number in range(3):
        request = f"GET /c{number} HTTP/1.1\r\nHost: a\r\n\r\n".encode()
        answer = raw_exchange(port, request)
        assert answer.endswith(b"over tcp")
        sent += len(request)
        received += len(answer)
    wait_until(lambda: dataplane.stats("lsn-web")["active_connections"] == 0)

    samples = _samples(_scrape(control.port)[2])

    labels = {"listener": "lsn-web", "protocol": "tcp", "port": str(port)}
    # For TCP a "request" is a connection proxied.
    assert _value(samples, "ferry_listener_requests_total", **labels) == 3
    assert _value(samples, "ferry_listener_connections_total", **labels) == 3
    assert _value(samples, "ferry_listener_active_connections", **labels) == 0
    assert _value(samples, "ferry_listener_received_bytes_total", **labels) == sent
    assert _value(samples, "ferry_listener_sent_bytes_total", **labels) == received
    # No HTTP here: no response classes, and no request timed.
    for name in ("1xx", "2xx", "3xx", "4xx", "5xx"):
        assert _value(samples, "ferry_listener_responses_total", status_class=name, **labels) == 0
    assert _value(samples, "ferry_listener_request_duration_seconds_count", **labels) == 0
    server = _server("lsn-web", "sgp-web", "srv-web-0", web.port)
    assert _value(samples, "ferry_server_requests_total", **server) == 3
    assert _value(samples, "ferry_server_connect_failures_total", **server) == 0
    assert _value(samples, "ferry_server_active_connections", **server) == 0
    assert len(web.requests) == 3


def test_udp_listener_counts_sessions_and_bytes(control, dataplane, udp_echoes):  # noqa: F811
    echo = udp_echoes("a")
    port = free_udp_port()
    dataplane.apply(
        snapshot([listener(port, protocol="udp", listener_id="lsn-udp")], [udp_group(echo)])
    )
    sent = received = 0
    clients = [udp_client() for _ in range(2)]
    try:
        for client in clients:
            for data in (b"one", b"two-two"):
                client.sendto(data, ("127.0.0.1", port))
                answer = client.recvfrom(2048)[0]
                assert answer == b"a:" + data
                sent += len(data)
                received += len(answer)
    finally:
        for client in clients:
            client.close()

    samples = _samples(_scrape(control.port)[2])

    labels = {"listener": "lsn-udp", "protocol": "udp", "port": str(port)}
    # For UDP a "request" is a datagram from a client, and a connection a session: one per
    # client address.
    assert _value(samples, "ferry_listener_requests_total", **labels) == 4
    assert _value(samples, "ferry_listener_connections_total", **labels) == 2
    assert _value(samples, "ferry_listener_received_bytes_total", **labels) == sent
    assert _value(samples, "ferry_listener_sent_bytes_total", **labels) == received
    assert _value(samples, "ferry_listener_bandwidth_dropped_datagrams_total", **labels) == 0
    server = _server("lsn-udp", "sgp-web", "srv-a-0", echo.port)
    assert _value(samples, "ferry_server_requests_total", **server) == 2
    assert echo.received == 4


def test_udp_datagrams_over_the_bandwidth_limit_are_counted(control, dataplane, udp_echoes):  # noqa: F811
    echo = udp_echoes("a")
    port = free_udp_port()
    # 1 Mbit/s: a bucket of 16 KiB that refills at 125 kB/s.
    dataplane.apply(
        snapshot(
            [listener(port, protocol="udp", listener_id="lsn-udp", bandwidth_mbit=1)],
            [udp_group(echo)],
        )
    )
    burst = 60
    payload = b"x" * 1400
    with udp_client() as client:
        for _ in range(burst):
            client.sendto(payload, ("127.0.0.1", port))

        def udp() -> dict:
            return dataplane.status()["listeners"]["lsn-udp"]["udp"]

        # Every answer the echo sent back has been either relayed to us or dropped.
        assert wait_until(lambda: udp()["datagrams_out"] + udp()["throttled"] == burst), udp()
        relayed = udp()["datagrams_out"]
        answers = [client.recvfrom(2048)[0] for _ in range(relayed)]

    samples = _samples(_scrape(control.port)[2])

    labels = {"listener": "lsn-udp", "protocol": "udp", "port": str(port)}
    dropped = _value(samples, "ferry_listener_bandwidth_dropped_datagrams_total", **labels)
    # 84 kB sent back at once against a 16 KiB burst: some were dropped, the rest arrived.
    assert 0 < dropped == burst - len(answers)
    assert _value(samples, "ferry_listener_sent_bytes_total", **labels) == sum(map(len, answers))
    assert echo.received == burst


def test_a_server_with_a_request_on_it_has_an_active_connection(control, backends, dataplane):  # noqa: F811
    slow = backends("slow", lambda request: Reply(body=b"done", delay=1))
    port = free_port()
    dataplane.apply(snapshot([listener(port)], [server_group(slow)]))
    answers: list[int] = []
    client = threading.Thread(target=lambda: answers.append(get(port)[0]))
    client.start()
    try:
        assert wait_until(lambda: len(slow.requests) == 1)
        samples = _samples(_scrape(control.port)[2])
    finally:
        client.join(WAIT)

    server = _server("lsn-web", "sgp-web", "srv-slow-0", slow.port)
    labels = {"listener": "lsn-web", "protocol": "http", "port": str(port)}
    assert _value(samples, "ferry_server_active_connections", **server) == 1
    assert _value(samples, "ferry_listener_active_connections", **labels) == 1
    assert _value(samples, "ferry_server_requests_total", **server) == 1
    assert answers == [200]
    after = _samples(_scrape(control.port)[2])
    assert _value(after, "ferry_server_active_connections", **server) == 0


class WriterNode:
    """A node with an access-log writer of the test's making, and its control API."""

    def __init__(self, loop_thread, writer: AccessLogWriter) -> None:
        self.loop_thread = loop_thread
        self.writer = writer
        self.node = loop_thread.call(lambda: Node(access_log=writer))
        self.api = loop_thread.call(lambda: ControlApi(self.node, token=TOKEN))
        self.control = ControlClient(loop_thread.run(self.api.start("127.0.0.1", 0))[1])

    def close(self) -> None:
        self.loop_thread.call(self.api.close)
        self.loop_thread.run(self.node.shutdown(0))
        self.writer.close()


@pytest.mark.parametrize(
    ("make_writer", "reason"),
    [
        # A writer with no room at all: every line is dropped on the loop, none queued.
        (lambda tmp: AccessLogWriter(directory=tmp, max_pending=0), "dropped"),
        # A state "directory" that is a file: every write fails on the writer thread.
        (lambda tmp: AccessLogWriter(directory=_a_file(tmp)), "failed"),
    ],
)
def test_access_log_lines_not_written_are_counted(
    loop_thread, backends, tmp_path, make_writer, reason
):
    web = backends("web")
    node = WriterNode(loop_thread, make_writer(tmp_path))
    try:
        port = free_port()
        node.control.put(snapshot([listener(port, access_log=True)], [server_group(web)]))
        assert [get(port, f"/n{number}")[0] for number in range(4)] == [200] * 4

        def lost() -> dict[str, float]:
            samples = _samples(_scrape(node.control.port)[2])
            return {
                name: _value(samples, "ferry_node_access_log_dropped_lines_total", reason=name)
                for name in ("dropped", "failed")
            }

        assert wait_until(lambda: lost()[reason] == 4), lost()
        counted = lost()
        # The console's copy (the ring) still has every line.
        found = loop_thread.call(lambda: node.node.access_log("lsn-web"))
    finally:
        node.close()
    assert counted == {"dropped": 0, "failed": 0, reason: 4}
    assert [line["path"] for line in found["lines"]] == ["/n3", "/n2", "/n1", "/n0"]


def _a_file(tmp_path: Path) -> Path:
    path = tmp_path / "not-a-directory"
    path.write_text("")
    return path
