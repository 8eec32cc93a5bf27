"""GET /metrics on the node: real traffic through a real node, scraped and parsed with
prometheus_client's own parser, compared with what the client and the recording backend saw."""

from __future__ import annotations

import http.client
import socket

import pytest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from dataplane.control import ControlApi
from dataplane.health import REASON_CODES
from dataplane.metrics import reason_code
from tests.dataplane.conftest import (
    WAIT,
    Reply,
    get,
    listener,
    raw_exchange,
    server_group,
    snapshot,
    split_responses,
    wait_until,
)
from tests.dataplane.test_control import TOKEN, ControlClient
from tests.dataplane.test_process import TOKEN as NODE_TOKEN
from tests.dataplane.test_workers import Supervisor
from tests.fixtures.ports import free_port


def _scrape(port: int, token: str | None = TOKEN) -> tuple[int, str, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        connection.request("GET", "/metrics", headers=headers)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        connection.close()


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample as {(name, labels): value}, parsed the way Prometheus parses it."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def control(loop_thread, dataplane) -> ControlClient:
    api = loop_thread.call(lambda: ControlApi(dataplane.node, token=TOKEN))
    _, port = loop_thread.run(api.start("127.0.0.1", 0))
    yield ControlClient(port)
    loop_thread.call(api.close)


def _replies(request) -> Reply:
    if request.target == "/missing":
        return Reply(404, body=b"no such page")
    if request.target == "/broken":
        return Reply(503, body=b"down for a while")
    return Reply(200, body=b"hello from web")


def test_listener_counters_match_what_the_client_and_backend_saw(control, backends, dataplane):
    web = backends("web", _replies)
    port = free_port()
    control.put(snapshot([listener(port)], [server_group(web)], generation=4))
    targets = ["/", "/", "/", "/missing", "/broken", "/broken"]
    sent = received = 0
    answers = []
    for target in targets:
        request = f"GET {target} HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n".encode()
        response = raw_exchange(port, request)
        sent += len(request)
        received += len(response)
        answers.extend(status for status, _ in split_responses(response))
    # The node counts a connection closed after its last byte reached the client.
    wait_until(lambda: dataplane.stats("lsn-web")["active_connections"] == 0)

    status, content_type, text = _scrape(control.port)

    assert status == 200
    assert content_type == CONTENT_TYPE_LATEST
    samples = _samples(text)
    labels = {"listener": "lsn-web", "protocol": "http", "port": str(port)}
    assert answers == [200, 200, 200, 404, 503, 503]
    assert [request.target for request in web.requests] == targets
    by_class = {
        name: _value(samples, "ferry_listener_responses_total", status_class=name, **labels)
        for name in ("1xx", "2xx", "3xx", "4xx", "5xx")
    }
    assert by_class == {"1xx": 0, "2xx": 3, "3xx": 0, "4xx": 1, "5xx": 2}
    assert _value(samples, "ferry_listener_requests_total", **labels) == len(web.requests)
    assert _value(samples, "ferry_listener_received_bytes_total", **labels) == sent
    assert _value(samples, "ferry_listener_sent_bytes_total", **labels) == received
    assert _value(samples, "ferry_listener_connections_total", **labels) == len(targets)
    assert _value(samples, "ferry_listener_active_connections", **labels) == 0
    assert _value(samples, "ferry_listener_denied_connections_total", **labels) == 0
    assert _value(samples, "ferry_listener_running", **labels) == 1
    assert _value(samples, "ferry_node_generation") == 4
    assert _value(samples, "ferry_node_apply_duration_seconds") > 0


def test_an_open_connection_is_active_and_a_denied_one_is_counted(control, backends, dataplane):
    web = backends("web")
    port = free_port()
    acl = {"mode": "blacklist", "acl_id": "acl-local0001"}
    acls = [{"id": "acl-local0001", "entries": ["127.0.0.0/8"]}]
    control.put(snapshot([listener(port)], [server_group(web)], generation=1))
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT):
        wait_until(lambda: dataplane.stats("lsn-web")["active_connections"] == 1)
        samples = _samples(_scrape(control.port)[2])
        labels = {"listener": "lsn-web", "protocol": "http", "port": str(port)}
        assert _value(samples, "ferry_listener_active_connections", **labels) == 1

    control.put(snapshot([listener(port, acl=acl)], [server_group(web)], generation=2, acls=acls))
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
        get(port)

    samples = _samples(_scrape(control.port)[2])
    assert _value(samples, "ferry_listener_denied_connections_total", **labels) == 1
    assert web.requests == []


def test_servers_report_health_reason_code_and_active_connections(control, backends, dataplane):
    web = backends("web")
    dead = free_port()
    group = server_group(
        web,
        health_check={"protocol": "tcp", "interval": 1, "timeout": 1, "unhealthy_threshold": 1},
    )
    group["servers"].append({"id": "srv-dead", "address": "127.0.0.1", "port": dead})
    port = free_port()
    control.put(snapshot([listener(port)], [group], generation=1))

    def checked() -> bool:
        backends_seen = dataplane.status()["listeners"]["lsn-web"]["backends"]
        return all(backend["seconds_since_check"] is not None for backend in backends_seen)

    assert wait_until(checked)
    samples = _samples(_scrape(control.port)[2])

    up = {
        "listener": "lsn-web",
        "server_group": "sgp-web",
        "server": "srv-web-0",
        "address": f"127.0.0.1:{web.port}",
    }
    down = {**up, "server": "srv-dead", "address": f"127.0.0.1:{dead}"}
    assert _value(samples, "ferry_server_healthy", **up) == 1
    assert _value(samples, "ferry_server_healthy", **down) == 0
    assert _value(samples, "ferry_server_last_check_info", result="pass", reason="ok", **up) == 1
    assert (
        _value(samples, "ferry_server_last_check_info", result="fail", reason="refused", **down)
        == 1
    )
    assert _value(samples, "ferry_server_active_connections", **up) == 0


def test_refused_snapshots_are_counted_by_reason(control, backends):
    web = backends("web")
    port = free_port()
    assert control.put(snapshot([listener(port)], [server_group(web)], generation=5))[0] == 200
    assert control.put({"generation": "five"})[0] == 422
    assert control.put(snapshot([listener(port)], [server_group(web)], generation=3))[0] == 409
    assert control.put(snapshot([listener(port)], [server_group(web)], generation=2))[0] == 409

    samples = _samples(_scrape(control.port)[2])

    assert _value(samples, "ferry_node_config_rejections_total", reason="invalid") == 1
    assert _value(samples, "ferry_node_config_rejections_total", reason="generation") == 2
    assert _value(samples, "ferry_node_generation") == 5


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_metrics_need_the_bearer_token(control, token):
    status, _, body = _scrape(control.port, token)

    assert status == 401
    assert "ferry_" not in body


def test_malformed_or_oversized_scrapes_get_the_usual_refusals(control):
    token = f"Authorization: Bearer {TOKEN}\r\n".encode()
    refusals = {
        b"POST /metrics HTTP/1.1\r\n" + token + b"Content-Length: 0\r\n\r\n": 405,
        b"GET /metrics HTTP/1.1\r\n" + token + b"Content-Length: 5\r\n\r\nhello": 413,
        b"GET /metrics HTTP/1.1\r\n" + token + b"X-Pad: " + b"a" * 20000 + b"\r\n\r\n": 431,
        b"GET /metrics HTTP/1.1\r\n" + token + b"Content-Length: x\r\n\r\n": 400,
        b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 20000 + b"\r\n\r\n": 431,
    }
    for request, expected in refusals.items():
        answer = raw_exchange(control.port, request)
        assert int(answer.split(b" ", 2)[1]) == expected, request[:40]
        assert b"ferry_" not in answer


@pytest.mark.parametrize(
    ("backend", "code"),
    [
        *[({"reason_code": code, "reason": "any text"}, code) for code in REASON_CODES],
        ({"reason_code": None, "reason": "health check disabled"}, "disabled"),
        ({"reason_code": None, "reason": "not checked yet"}, "unchecked"),
        ({"reason": "connection refused"}, "unchecked"),
        # A code this node does not know (a newer node, or anything else): one label, "other".
        ({"reason_code": "exploded", "reason": "ok"}, "other"),
        ({"reason_code": ["ok"]}, "other"),
    ],
)
def test_the_reason_label_is_the_nodes_reason_code(backend, code):
    assert reason_code(backend) == code


@pytest.mark.integration
def test_a_supervisor_adds_up_its_workers_counters(tmp_path, backends):
    supervisor = Supervisor(tmp_path, workers=2)
    try:
        web = backends("web")
        port = free_port()
        status, _ = supervisor.request(
            "PUT", "/v1/config", snapshot([listener(port)], [server_group(web)], generation=7)
        )
        assert status == 200
        # Each request is a new connection, so the kernel spreads them over both workers.
        results = [get(port)[::2] for _ in range(20)]
        assert results == [(200, b"web")] * 20

        def scraped() -> dict:
            return _samples(_scrape(supervisor.port, NODE_TOKEN)[2])

        labels = {"listener": "lsn-web", "protocol": "http", "port": str(port)}
        assert wait_until(
            lambda: _value(scraped(), "ferry_listener_active_connections", **labels) == 0
        )
        samples = scraped()
        _, report = supervisor.request("GET", "/v1/status")
        counters = report["listeners"]["lsn-web"]["counters"]
    finally:
        supervisor.kill()

    assert len(web.requests) == 20
    assert _value(samples, "ferry_listener_requests_total", **labels) == 20
    assert _value(samples, "ferry_listener_connections_total", **labels) == 20
    assert _value(samples, "ferry_listener_responses_total", status_class="2xx", **labels) == 20
    assert _value(samples, "ferry_listener_sent_bytes_total", **labels) == counters["bytes_out"]
    assert _value(samples, "ferry_listener_received_bytes_total", **labels) == counters["bytes_in"]
    assert _value(samples, "ferry_node_generation") == 7
    assert _value(samples, "ferry_node_apply_duration_seconds") > 0
