"""The node's latency histograms, TLS handshake counters and per-server counters on GET /metrics:
known requests through a real node, scraped and parsed with prometheus_client's own parser, and
the same through a supervisor whose two workers' counts must add up."""

from __future__ import annotations

import json
import socket
import ssl

import pytest

from dataplane.stats import BUCKETS
from tests.dataplane.conftest import (
    WAIT,
    Reply,
    certificate_entry,
    get,
    listener,
    read_until_closed,
    server_group,
    snapshot,
    wait_until,
)
from tests.dataplane.test_https import https_listener, trusting
from tests.dataplane.test_metrics import _samples, _scrape, _value, control  # noqa: F401
from tests.dataplane.test_process import TOKEN as NODE_TOKEN
from tests.dataplane.test_workers import Supervisor
from tests.fixtures.ports import free_port

LABELS = {"listener": "lsn-web", "protocol": "http"}


def _bucket(samples: dict, name: str, le: str, **labels: str) -> float:
    return _value(samples, f"{name}_bucket", le=le, **labels)


def _le(seconds: float) -> str:
    return repr(float(seconds))


def test_histograms_count_every_request_in_its_bucket(dataplane, control, backends):  # noqa: F811
    fast = backends("fast")
    slow = backends("slow", lambda request: Reply(body=b"slow", delay=0.3))
    port = free_port()
    slow_port = free_port()
    dataplane.apply(
        snapshot(
            [
                listener(port),
                listener(slow_port, listener_id="lsn-slow", group_id="sgp-slow"),
            ],
            [server_group(fast), server_group(slow, group_id="sgp-slow")],
        )
    )
    assert [get(port)[0] for _ in range(5)] == [200] * 5
    assert [get(slow_port)[0] for _ in range(2)] == [200] * 2

    samples = _samples(_scrape(control.port)[2])

    fast_labels = {**LABELS, "port": str(port)}
    slow_labels = {"listener": "lsn-slow", "protocol": "http", "port": str(slow_port)}
    for name in (
        "ferry_listener_request_duration_seconds",
        "ferry_listener_backend_response_time_seconds",
    ):
        assert _value(samples, f"{name}_count", **fast_labels) == 5
        assert _bucket(samples, name, "+Inf", **fast_labels) == 5
        assert _bucket(samples, name, _le(BUCKETS[-1]), **fast_labels) == 5
        assert _value(samples, f"{name}_count", **slow_labels) == 2
        # 0.3 s each: above the 0.25 s bucket, within the 0.5 s one.
        assert _bucket(samples, name, "0.25", **slow_labels) == 0
        assert _bucket(samples, name, "0.5", **slow_labels) == 2
        assert 0.6 <= _value(samples, f"{name}_sum", **slow_labels) < 1.0
        # Cumulative buckets never decrease.
        counts = [_bucket(samples, name, _le(bound), **slow_labels) for bound in BUCKETS]
        assert counts == sorted(counts)
    # A request lasts at least as long as its backend takes to answer.
    assert _value(samples, "ferry_listener_request_duration_seconds_sum", **slow_labels) >= _value(
        samples, "ferry_listener_backend_response_time_seconds_sum", **slow_labels
    )
    server = {"listener": "lsn-web", "server_group": "sgp-web", "server": "srv-fast-0"}
    server["address"] = f"127.0.0.1:{fast.port}"
    assert _value(samples, "ferry_server_requests_total", **server) == 5
    assert _value(samples, "ferry_server_connect_failures_total", **server) == 0
    # The status document carries the same histogram, cumulative, where the console reads it.
    status = dataplane.status()["listeners"]["lsn-slow"]
    assert status["request_duration"]["buckets"] == list(BUCKETS)
    assert status["request_duration"]["count"] == 2
    assert status["request_duration"]["counts"][BUCKETS.index(0.5)] == 2
    assert status["backend_response_time"] == status["counters"]["backend_response_time"]


def test_node_answers_count_in_the_histograms_and_connect_failures_per_server(
    dataplane,
    control,  # noqa: F811
):
    port = free_port()
    dead = free_port()
    group = {
        "id": "sgp-web",
        "name": "web",
        "backend_protocol": "http",
        "servers": [{"id": "srv-dead", "address": "127.0.0.1", "port": dead, "weight": 100}],
        "health_check": {"enabled": False},
    }
    dataplane.apply(snapshot([listener(port)], [group]))
    assert [get(port)[0] for _ in range(3)] == [502] * 3

    samples = _samples(_scrape(control.port)[2])

    labels = {**LABELS, "port": str(port)}
    assert _value(samples, "ferry_listener_request_duration_seconds_count", **labels) == 3
    # No backend answered: nothing to time.
    assert _value(samples, "ferry_listener_backend_response_time_seconds_count", **labels) == 0
    assert _value(samples, "ferry_listener_responses_total", status_class="5xx", **labels) == 3
    server = {
        "listener": "lsn-web",
        "server_group": "sgp-web",
        "server": "srv-dead",
        "address": f"127.0.0.1:{dead}",
    }
    assert _value(samples, "ferry_server_requests_total", **server) == 3
    assert _value(samples, "ferry_server_connect_failures_total", **server) == 3


def test_tls_handshakes_and_failures_by_reason(dataplane, control, backends, ca):  # noqa: F811
    web = backends("web")
    port = free_port()
    dataplane.apply(
        snapshot(
            [https_listener(port, tls_policy="tls_cipher_policy_1_2_strict")],
            [server_group(web)],
            certificates=[certificate_entry("cert-default", ca.issue_cert("www.example.com"))],
        )
    )
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
            with trusting(ca).wrap_socket(raw, server_hostname="www.example.com") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                assert read_until_closed(tls).startswith(b"HTTP/1.1 200 ")
    # A TLS 1.3-only client against a TLS 1.2 policy: OpenSSL refuses the version.
    only_13 = trusting(ca)
    only_13.minimum_version = ssl.TLSVersion.TLSv1_3
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
        with pytest.raises(ssl.SSLError):
            only_13.wrap_socket(raw, server_hostname="www.example.com")
    # Plain HTTP on the TLS port.
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        read_until_closed(raw)

    labels = {"listener": "lsn-tls", "protocol": "https", "port": str(port)}

    def failures() -> dict[str, float]:
        samples = _samples(_scrape(control.port)[2])
        return {
            dict(key[1])["reason"]: value
            for key, value in samples.items()
            if key[0] == "ferry_listener_tls_handshake_failures_total"
        }

    assert wait_until(lambda: sum(failures().values()) == 2), failures()
    samples = _samples(_scrape(control.port)[2])
    assert _value(samples, "ferry_listener_tls_handshakes_total", **labels) == 2
    reasons = failures()
    assert reasons.get("unsupported_protocol") == 1, reasons
    assert reasons.get("http_request") == 1, reasons


def test_a_supervisor_adds_up_its_workers_histograms_and_access_logs(tmp_path, backends):
    supervisor = Supervisor(tmp_path, workers=2)
    try:
        web = backends("web")
        port = free_port()
        status, _ = supervisor.request(
            "PUT",
            "/v1/config",
            snapshot([listener(port, access_log=True)], [server_group(web)], generation=3),
        )
        assert status == 200
        # A new connection each: the kernel spreads them over both workers.
        assert [get(port, f"/n{number}")[0] for number in range(20)] == [200] * 20
        labels = {**LABELS, "port": str(port)}

        def scraped() -> dict:
            return _samples(_scrape(supervisor.port, NODE_TOKEN)[2])

        assert wait_until(
            lambda: (
                _value(scraped(), "ferry_listener_request_duration_seconds_count", **labels) == 20
            )
        )
        samples = scraped()
        _, lines = supervisor.request("GET", "/v1/listeners/lsn-web/access-log?limit=1000")
        _, report = supervisor.request("GET", "/v1/status")
        log_file = tmp_path / "state" / "access.log"
        assert wait_until(
            lambda: log_file.exists() and len(log_file.read_bytes().splitlines()) == 20
        )
        written = [json.loads(line) for line in log_file.read_bytes().splitlines()]
    finally:
        supervisor.kill()

    assert _value(samples, "ferry_listener_backend_response_time_seconds_count", **labels) == 20
    assert _bucket(samples, "ferry_listener_request_duration_seconds", "+Inf", **labels) == 20
    server = {
        "listener": "lsn-web",
        "server_group": "sgp-web",
        "server": "srv-web-0",
        "address": f"127.0.0.1:{web.port}",
    }
    assert _value(samples, "ferry_server_requests_total", **server) == 20
    histogram = report["listeners"]["lsn-web"]["request_duration"]
    assert histogram["count"] == 20 and histogram["counts"][-1] == 20
    # Both workers served some, and the supervisor merged their lines newest first.
    assert sorted(line["path"] for line in lines["lines"]) == sorted(f"/n{n}" for n in range(20))
    times = [line["time"] for line in lines["lines"]]
    assert times == sorted(times, reverse=True)
    assert sorted(line["path"] for line in written) == sorted(f"/n{n}" for n in range(20))
