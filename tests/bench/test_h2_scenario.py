"""Scenario 9, HTTPS with HTTP/2: h2load's command and output, and h2 on every HTTPS listener."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import configs, report, scenarios
from bench.loadgen import LoadError, h2load_command, parse_h2load_h2, parse_h2load_protocols
from dataplane.config import Snapshot

PORTS = configs.ProxyPorts(http=21001, https=21002, tcp_ssl=21003)
BACKEND = 21000

# Trimmed from h2load 1.52 against the HTTPS listener of a proxy with ALPN h2.
H2 = """starting benchmark...
spawning thread #0: 16 total client(s). Timing-based test with 0s of warm-up time and 2s of main duration for measurements.
Warm-up started for thread #0.
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
TLS Protocol: TLSv1.3
Cipher: TLS_AES_128_GCM_SHA256
Server Temp Key: X25519 253 bits
Application protocol: h2
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 2.00s, 27214.00 req/s, 3.53MB/s
requests: 54428 total, 54588 started, 54428 done, 54428 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 54428 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 7.06MB (7402688) total, 6.59MB (6912356) headers (space savings 32.45%), 0B (0) data
"""  # noqa: E501

# Against a server with no ALPN: h2load falls back to HTTP/1.1 and still exits 0.
NO_ALPN = """TLS Protocol: TLSv1.3
Cipher: TLS_AES_256_GCM_SHA384
Server Temp Key: X25519 253 bits
No protocol negotiated. Fallback behaviour may be activated
Server does not support NPN/ALPN. Falling back to HTTP/1.1.
Application protocol: http/1.1

finished in 1.00s, 41620.00 req/s, 1.51MB/s
requests: 41620 total, 41624 started, 41620 done, 41620 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 41620 2xx, 0 3xx, 0 4xx, 0 5xx
"""


def test_h2load_run_over_h2_gives_its_totals() -> None:
    load = parse_h2load_h2(H2)

    assert parse_h2load_protocols(H2) == ["h2"]
    assert load.requests == 54428
    assert load.seconds == pytest.approx(2.0)
    assert load.failed == 0


@pytest.mark.parametrize(
    ("output", "agreed"),
    [
        (H2.replace("Application protocol: h2", "Application protocol: http/1.1"), "http/1.1"),
        (NO_ALPN, "http/1.1"),
        (H2.replace("Application protocol: h2\n", ""), "no application protocol"),
        (H2 + "Application protocol: http/1.1\n", "h2, http/1.1"),
    ],
)
def test_anything_but_h2_fails_the_run(output: str, agreed: str) -> None:
    with pytest.raises(LoadError, match=f"negotiated {agreed}, not h2"):
        parse_h2load_h2(output)


@pytest.mark.parametrize(
    "line",
    [
        "requests: 100 total, 100 started, 100 done, 97 succeeded, 3 failed, 3 errored, 0 timeout",
        "requests: 100 total, 100 started, 100 done, 100 succeeded, 0 failed, 0 errored, 1 timeout",
    ],
)
def test_failed_errored_or_timed_out_requests_fail_the_run(line: str) -> None:
    output = H2.replace(
        "requests: 54428 total, 54588 started, 54428 done, 54428 succeeded, 0 failed, "
        "0 errored, 0 timeout",
        line,
    )

    with pytest.raises(LoadError, match="h2load saw failures: requests: "):
        parse_h2load_h2(output)


def test_bad_statuses_fail_the_run() -> None:
    output = H2.replace("54428 2xx, 0 3xx, 0 4xx, 0 5xx", "54420 2xx, 0 3xx, 0 4xx, 8 5xx")

    with pytest.raises(LoadError, match="status codes: 54420 2xx"):
        parse_h2load_h2(output)


def test_h2load_command_multiplexes_over_tls_for_a_duration() -> None:
    command = h2load_command(
        "/usr/bin/h2load", "https://127.0.0.1:21002/0", seconds=4, connections=16, streams=10
    )

    assert command == ["/usr/bin/h2load", "-c16", "-m10", "-t1", "-D4", "https://127.0.0.1:21002/0"]
    # --h1 or an npn-list without h2 would make this an HTTP/1.1 measurement.
    assert not any(part.startswith(("--h1", "--npn-list")) for part in command)


def test_every_h2_row_of_both_plans_is_a_metric_with_a_ratio() -> None:
    assert scenarios.FULL.h2_sizes == ("0", "1k")
    assert set(scenarios.QUICK.h2_sizes) <= set(scenarios.FULL.h2_sizes)
    for size in scenarios.FULL.h2_sizes:
        metric = report.METRICS[scenarios.h2_metric(size)]
        assert metric.unit == "req/s"
        assert metric.better == "higher"
        assert metric.has_ratio
    assert report.METRICS["https_h2_0b_per_cpu"].unit == "req/CPU-s"


def test_dataplane_offers_h2_on_its_https_listener_only() -> None:
    certificate = configs.make_certificate()
    snapshot = Snapshot.from_dict(
        configs.dataplane_snapshot(
            generation=1,
            ports=PORTS,
            backend_port=BACKEND,
            certificate=certificate,
            extra_ports=[22000],
        )
    )

    assert {listener.protocol: listener.http2 for listener in snapshot.listeners} == {
        "http": False,
        "https": True,
        "tcp_ssl": False,
    }
    web = next(group for group in snapshot.server_groups if group.id == configs.WEB_GROUP_ID)
    assert web.backend_protocol == "http"


def test_haproxy_offers_h2_on_its_https_bind_only() -> None:
    text = configs.haproxy_cfg(workers=1, ports=PORTS, backend_port=BACKEND, pem=Path("/x.pem"))

    binds = [line.strip() for line in text.splitlines() if line.strip().startswith("bind ")]
    assert [bind for bind in binds if "alpn" in bind] == [
        "bind 127.0.0.1:21002 ssl crt /x.pem alpn h2,http/1.1"
    ]
    # The backend stays HTTP/1.1: no "proto h2" on the server line.
    assert "proto h2" not in text


def test_nginx_offers_h2_on_its_https_server_only(tmp_path: Path) -> None:
    text = configs.proxy_nginx_conf(
        workers=1,
        ports=PORTS,
        backend_port=BACKEND,
        certificate=tmp_path / "cert.pem",
        key=tmp_path / "key.pem",
        directory=tmp_path,
        stream_module=None,
    )

    assert text.count(" http2") == 1
    assert "listen 127.0.0.1:21002 ssl http2 backlog=4096;" in text
    assert "proxy_http_version 1.1;" in text
