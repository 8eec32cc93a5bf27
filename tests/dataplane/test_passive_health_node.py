"""Passive health checks on a node with real sockets: a server answering 500 is ejected after its
consecutive failures and gets nothing new while the other serves everything; it returns after
its ejection time, and a second ejection lasts longer; the maximum percentage keeps the last
servers in (fail open); connect failures eject a TCP listener's server; HTTP/2 streams count as
HTTP/1.1 requests do. Ejection times are the shortest the schema allows (1-2 s), and the tests
wait for a return with generous bounds: the ejection time is the feature under test."""

from __future__ import annotations

import socket
import time
from typing import Any

from tests.dataplane.conftest import (
    WAIT,
    Reply,
    certificate_entry,
    get,
    listener,
    server_group,
    snapshot,
    wait_until,
)
from tests.dataplane.h2client import H2Client
from tests.dataplane.test_https import https_listener, trusting
from tests.dataplane.test_tcp import echo, tcp_group, tcp_listener  # noqa: F401 (fixture)
from tests.fixtures.ports import free_port

PASSIVE = {
    "enabled": True,
    "consecutive_failures": 3,
    "base_ejection_time": 1,
    "max_ejection_time": 120,
    "max_ejection_percent": 50,
}


def failing(_request: Any) -> Reply:
    return Reply(status=500, body=b"broken")


def passive_group(*backends: Any, **passive: Any) -> dict[str, Any]:
    group = server_group(*backends)
    group["passive_health_check"] = {**PASSIVE, **passive}
    return group


def serve(dataplane: Any, group: dict[str, Any], **settings: Any) -> int:
    port = free_port()
    result = dataplane.apply(
        snapshot([listener(port, scheduler="round_robin", **settings)], [group])
    )
    assert result["lsn-web"]["status"] == "running", result
    return port


def servers(dataplane: Any, listener_id: str = "lsn-web") -> dict[str, dict[str, Any]]:
    entries = dataplane.status()["listeners"][listener_id]["backends"]
    return {entry["id"]: entry for entry in entries}


def test_a_failing_server_is_ejected_returns_and_is_ejected_longer(dataplane, backends):
    good = backends("good")
    bad = backends("bad", failing)
    port = serve(dataplane, passive_group(good, bad))

    statuses = [get(port)[0] for _ in range(6)]
    # Round robin: three 500s from the bad server, then it is out.
    assert statuses == [200, 500, 200, 500, 200, 500]
    assert len(bad.requests) == 3
    entry = servers(dataplane)["srv-bad-1"]
    assert entry["ejected"] is True and entry["healthy"] is False
    assert entry["ejection_reason"] == "passive: 3 consecutive 5xx"
    assert entry["ejected_until"] > time.time()
    assert 0 < entry["ejection_seconds_left"] <= 1.0
    assert entry["ejections"] == 1

    # Ejected: the other server takes every request.
    served_before = len(good.requests)
    assert [get(port)[0] for _ in range(10)] == [200] * 10
    assert len(bad.requests) == 3
    assert len(good.requests) == served_before + 10

    # Back after its second: it gets requests again, and fails again.
    assert wait_until(lambda: not servers(dataplane)["srv-bad-1"]["ejected"], timeout=5)
    statuses = [get(port)[0] for _ in range(6)]
    assert statuses.count(500) == 3
    assert len(bad.requests) == 6
    entry = servers(dataplane)["srv-bad-1"]
    # The second ejection lasts twice the base time.
    assert entry["ejected"] is True and entry["ejections"] == 2
    assert 1.0 < entry["ejection_seconds_left"] <= 2.0
    time.sleep(1.2)
    assert servers(dataplane)["srv-bad-1"]["ejected"] is True
    assert [get(port)[0] for _ in range(4)] == [200] * 4
    assert len(bad.requests) == 6
    assert wait_until(lambda: not servers(dataplane)["srv-bad-1"]["ejected"], timeout=5)


def test_max_ejection_percent_keeps_the_last_servers_in(dataplane, backends):
    first = backends("first", failing)
    second = backends("second", failing)
    port = serve(dataplane, passive_group(first, second, base_ejection_time=60))

    statuses = [get(port)[0] for _ in range(12)]
    # Both fail; 50% of two lets one out, the other serves on (fail open).
    assert statuses == [500] * 12
    entries = servers(dataplane)
    assert sorted(entry["ejected"] for entry in entries.values()) == [False, True]
    kept = next(entry for entry in entries.values() if not entry["ejected"])
    assert kept["healthy"] is True
    assert len(first.requests) + len(second.requests) == 12
    served = len(first.requests), len(second.requests)
    assert [get(port)[0] for _ in range(3)] == [500] * 3
    # Every request went to the server kept in.
    after = len(first.requests), len(second.requests)
    assert sorted(b - a for a, b in zip(served, after, strict=True)) == [0, 3]


def test_a_group_without_passive_checks_ejects_nothing(dataplane, backends):
    good = backends("good")
    bad = backends("bad", failing)
    port = serve(dataplane, server_group(good, bad))
    statuses = [get(port)[0] for _ in range(20)]
    assert statuses.count(500) == 10
    assert len(bad.requests) == 10
    entry = servers(dataplane)["srv-bad-1"]
    assert "ejected" not in entry and "ejections" not in entry


def test_a_backend_timeout_counts_for_the_server_that_did_not_answer(dataplane, backends):
    good = backends("good")
    slow = backends("slow", lambda _r: Reply(body=b"late", delay=3))
    port = serve(dataplane, passive_group(good, slow, consecutive_failures=2), response_timeout=1)
    statuses = [get(port)[0] for _ in range(4)]
    assert statuses == [200, 504, 200, 504]
    entry = servers(dataplane)["srv-slow-1"]
    assert entry["ejected"] is True
    assert entry["ejection_reason"] == "passive: 2 consecutive 5xx"
    assert [get(port)[0] for _ in range(3)] == [200] * 3


def test_metrics_count_ejections(dataplane, backends):
    from dataplane.metrics import ControlCounters, render

    good = backends("good")
    bad = backends("bad", failing)
    port = serve(dataplane, passive_group(good, bad))
    for _ in range(6):
        get(port)
    text = render(dataplane.status(), ControlCounters()).decode()

    def sample(name: str) -> str:
        return next(
            line
            for line in text.splitlines()
            if line.startswith(name + "{") and 'server="srv-bad-1"' in line
        )

    assert sample("ferry_server_ejections_total").endswith(" 1.0")
    assert sample("ferry_server_ejected").endswith(" 1.0")
    assert 'listener="lsn-web"' in sample("ferry_server_ejected")


def test_connect_failures_eject_a_tcp_listeners_server(dataplane, echo):  # noqa: F811
    alive = echo("alive")
    # A port nobody listens on: every connection to it is refused.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]

    class Dead:
        port = dead_port

    group = tcp_group(alive, Dead)
    group["passive_health_check"] = {**PASSIVE, "base_ejection_time": 60}
    port = free_port()
    result = dataplane.apply(snapshot([tcp_listener(port, scheduler="round_robin")], [group]))
    assert result["lsn-tcp"]["status"] == "running", result

    def talk() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.sendall(b"hi")
            return sock.recv(65536)

    # Every connection ends on the live server (the dead one's are retried there once).
    for _ in range(8):
        assert talk() == b"alive:hi"
    entry = servers(dataplane, "lsn-tcp")["srv-1"]
    assert entry["ejected"] is True
    assert entry["ejection_reason"] == "passive: 3 consecutive connect failures"
    failures = entry["connect_failures"]
    assert failures == 3
    for _ in range(5):
        assert talk() == b"alive:hi"
    # Ejected: no connection is tried on it any more.
    assert servers(dataplane, "lsn-tcp")["srv-1"]["connect_failures"] == failures


def test_http2_streams_count_like_http11_requests(dataplane, backends, ca):
    good = backends("good")
    bad = backends("bad", failing)
    port = free_port()
    certificates = [certificate_entry("cert-default", ca.issue_cert("www.example.com"))]
    result = dataplane.apply(
        snapshot(
            [https_listener(port, http2=True, scheduler="round_robin")],
            [passive_group(good, bad, consecutive_failures=2, base_ejection_time=60)],
            certificates=certificates,
        )
    )
    assert result["lsn-tls"]["status"] == "running", result
    with H2Client(port, trusting(ca)) as client:
        assert client.alpn == "h2"
        first = [client.get(f"/{n}").status for n in range(4)]
        then = [client.get(f"/again/{n}").status for n in range(4)]
    assert first == [200, 500, 200, 500]
    assert then == [200] * 4
    assert len(bad.requests) == 2
    entry = servers(dataplane, "lsn-tls")["srv-bad-1"]
    assert entry["ejected"] is True
