"""Retries on a real node (dataplane.retry): recording backends on loopback, one answering 503 or
refusing connections, and real HTTP/1.1, HTTP/2 and HTTP/3 clients. Every test checks what the
client got and what each backend received."""

from __future__ import annotations

import http.client
import time

import pytest

from dataplane.metrics import ControlCounters, render
from dataplane.retry import MIN_RETRIES_PER_SECOND
from tests.dataplane.conftest import (
    WAIT,
    Reply,
    certificate_entry,
    listener,
    server_group,
    snapshot,
)
from tests.dataplane.h2client import H2Client
from tests.dataplane.test_access_log import LoggedNode
from tests.dataplane.test_https import https_listener, trusting
from tests.dataplane.test_quic import leaf, quic  # noqa: F401
from tests.fixtures.ports import free_port


def unavailable(request):
    # A body sent in pieces: the node must not take any of it for the next response.
    return Reply(status=503, body=b"sick server says no", chunked=True)


def serve(dataplane, servers, *, generation=1, **settings):
    """An HTTP listener, round robin over `servers` in order, so the first request goes to the
    first server."""
    port = free_port()
    settings.setdefault("scheduler", "round_robin")
    result = dataplane.apply(
        snapshot([listener(port, **settings)], [server_group(*servers)], generation=generation)
    )
    assert result["lsn-web"]["status"] == "running", result
    return port


def exchange(connection, method="GET", path="/", body=None, headers=None):
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    return response.status, response.read()


def keep_alive(port):
    return http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)


def test_a_get_answered_503_is_retried_on_the_healthy_server(dataplane, backends):
    sick, well = backends("sick", unavailable), backends("well")
    # A budget that allows every request one retry (the floor alone allows three a second).
    port = serve(dataplane, [sick, well], retry_budget_percent=100)
    connection = keep_alive(port)

    status, body = exchange(connection, path="/page?x=1", headers={"X-Trace": "t1"})

    assert (status, body) == (200, b"well")
    [first] = sick.requests
    [again] = well.requests
    assert (first.method, first.target, again.method, again.target) == (
        "GET",
        "/page?x=1",
        "GET",
        "/page?x=1",
    )
    # The same request, headers and all, went to the second server.
    assert again.header("X-Trace") == first.header("X-Trace") == "t1"
    assert again.header("X-Forwarded-For") == first.header("X-Forwarded-For") == "127.0.0.1"
    counters = dataplane.stats("lsn-web")
    assert (counters["retries"], counters["retries_refused"]) == (1, 0)
    assert counters["responses"]["2xx"] == 1
    assert counters["responses"]["5xx"] == 0

    # The connection that carried the 503 was closed, not pooled: the next request on the same
    # client connection gets a clean answer, and the sick server sees a fresh connection.
    for _ in range(3):
        assert exchange(connection) == (200, b"well")
    connection.close()
    # Round robin sends each request to the sick server first: four 503s, four retries.
    assert (len(sick.requests), len(well.requests)) == (4, 4)
    assert sick.connections == 4
    assert well.connections == 1


def test_a_connect_failure_is_retried_for_any_method_body_included(dataplane, backends):
    dead, well = backends("dead"), backends("well")
    port = serve(dataplane, [dead, well])
    dataplane.loop_thread.run(dead.stop())
    connection = keep_alive(port)

    status, body = exchange(connection, "POST", "/orders", body=b'{"item": 7}')

    assert (status, body) == (200, b"well")
    [received] = well.requests
    assert (received.method, received.target, received.body) == ("POST", "/orders", b'{"item": 7}')
    assert dead.requests == []
    assert dataplane.stats("lsn-web")["retries"] == 1
    assert exchange(connection) == (200, b"well")
    connection.close()


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_a_non_idempotent_request_answered_503_is_not_retried(dataplane, backends, method):
    sick, well = backends("sick", unavailable), backends("well")
    port = serve(dataplane, [sick, well])
    connection = keep_alive(port)

    status, body = exchange(connection, method, "/orders", body=b"order=1")

    # The backend's own answer, body and all.
    assert (status, body) == (503, b"sick server says no")
    [received] = sick.requests
    assert (received.method, received.body) == (method, b"order=1")
    assert well.requests == []
    assert dataplane.stats("lsn-web")["retries"] == 0
    # Passed through as any response: the client connection goes on.
    assert exchange(connection) == (200, b"well")
    connection.close()


def test_a_get_with_a_body_answered_503_is_not_retried(dataplane, backends):
    sick, well = backends("sick", unavailable), backends("well")
    port = serve(dataplane, [sick, well])
    connection = keep_alive(port)

    # The body streamed to the first server and is gone: it cannot be sent again.
    status, body = exchange(connection, "GET", "/search", body=b"q=ferry")

    assert (status, body) == (503, b"sick server says no")
    [received] = sick.requests
    assert received.body == b"q=ferry"
    assert well.requests == []
    connection.close()


def test_a_502_is_retried_for_a_delete_without_a_body(dataplane, backends):
    bad_gateway = backends("gateway", lambda request: Reply(status=502, body=b"upstream down"))
    well = backends("well")
    port = serve(dataplane, [bad_gateway, well])
    connection = keep_alive(port)

    assert exchange(connection, "DELETE", "/item/3") == (200, b"well")
    assert exchange(connection, "GET", "/item/3") == (200, b"well")
    connection.close()

    assert [r.method for r in bad_gateway.requests] == ["DELETE", "GET"]
    assert [r.method for r in well.requests] == ["DELETE", "GET"]


def test_retries_zero_retries_nothing_not_even_a_connect_failure(dataplane, backends):
    sick, well = backends("sick", unavailable), backends("well")
    port = serve(dataplane, [sick, well], retries=0)
    connection = keep_alive(port)
    assert exchange(connection) == (503, b"sick server says no")
    connection.close()
    assert len(sick.requests) == 1
    assert well.requests == []

    dead, other = backends("dead"), backends("other")
    port = serve(dataplane, [dead, other], retries=0, generation=2)
    dataplane.loop_thread.run(dead.stop())
    connection = keep_alive(port)
    status, _ = exchange(connection)
    connection.close()
    assert status == 502
    assert other.requests == []
    assert dataplane.stats("lsn-web")["retries"] == 0


@pytest.mark.parametrize(("retries", "answered_by"), [(1, None), (2, "well")])
def test_each_retry_goes_to_a_server_not_tried_yet(dataplane, backends, retries, answered_by):
    first, second = backends("first", unavailable), backends("second", unavailable)
    well = backends("well")
    port = serve(dataplane, [first, second, well], retries=retries)
    connection = keep_alive(port)

    status, body = exchange(connection)
    connection.close()

    if answered_by is None:
        # One retry only: the client gets the last attempt's answer.
        assert (status, body) == (503, b"sick server says no")
        assert well.requests == []
    else:
        assert (status, body) == (200, b"well")
        assert len(well.requests) == 1
    assert len(first.requests) == len(second.requests) == 1


def test_the_budget_stops_a_retry_storm(dataplane, backends):
    servers = [backends(name, unavailable) for name in ("a", "b", "c", "d")]
    port = serve(dataplane, servers, retries=3, retry_budget_percent=10)
    requests = 200
    connection = keep_alive(port)

    started = time.monotonic()
    statuses = {exchange(connection)[0] for _ in range(requests)}
    elapsed = time.monotonic() - started
    connection.close()

    assert statuses == {503}
    retries = sum(len(server.requests) for server in servers) - requests
    # Without the budget: 3 retries per request, 600. With it: 10% of the requests, plus the
    # floor for each second the storm touched (the count is what matters; time only bounds the
    # floor's share).
    seconds_touched = int(elapsed) + 2
    assert 0 < retries <= requests * 10 // 100 + MIN_RETRIES_PER_SECOND * seconds_touched + 1
    counters = dataplane.stats("lsn-web")
    assert counters["retries"] == retries
    assert counters["retries_refused"] > 0
    metrics = render(dataplane.status(), ControlCounters()).decode()
    labels = f'{{listener="lsn-web",port="{port}",protocol="http"}}'
    assert f"ferry_listener_retries_total{labels} {retries}.0" in metrics
    refused = counters["retries_refused"]
    assert f"ferry_listener_retries_refused_total{labels} {refused}.0" in metrics


def test_the_access_log_counts_attempts_and_names_the_servers_left(loop_thread, backends, tmp_path):
    logged = LoggedNode(loop_thread, tmp_path)
    try:
        sick, well = backends("sick", unavailable), backends("well")
        port = free_port()
        logged.apply(
            snapshot(
                [listener(port, access_log=True, scheduler="round_robin")],
                [server_group(sick, well)],
            )
        )
        connection = keep_alive(port)
        assert exchange(connection) == (200, b"well")
        connection.close()
        [line] = logged.wait_lines("lsn-web", 1)
        assert (line["status"], line["server"], line["attempts"]) == (200, "srv-well-1", 2)
        assert line["retried_servers"] == ["srv-sick-0"]
    finally:
        loop_thread.run(logged.node.shutdown(0))
        logged.writer.close()


def test_an_http2_stream_is_retried_and_the_connection_goes_on(dataplane, backends, ca):
    sick, well = backends("sick", unavailable), backends("well")
    port = free_port()
    certificates = [certificate_entry("cert-default", ca.issue_cert("www.example.com"))]
    result = dataplane.apply(
        snapshot(
            [https_listener(port, http2=True, scheduler="round_robin")],
            [server_group(sick, well)],
            certificates=certificates,
        )
    )
    assert result["lsn-tls"]["status"] == "running", result
    client = H2Client(port, trusting(ca))
    try:
        assert client.alpn == "h2"
        first = client.get("/one")
        assert (first.status, first.body) == (200, b"well")
        second = client.get("/two")
        assert (second.status, second.body) == (200, b"well")
    finally:
        client.close_connection_only()
    assert [r.target for r in sick.requests] == ["/one", "/two"]
    assert [r.target for r in well.requests] == ["/one", "/two"]
    assert dataplane.stats("lsn-tls")["retries"] == 2


@pytest.mark.asyncio
async def test_an_http3_stream_is_retried_on_the_healthy_server(quic):  # noqa: F811
    sick = await quic.backend("sick", unavailable)
    well = await quic.backend("well")
    _, port = await quic.listener(quic.settings(sick, well, scheduler="round_robin"))

    async with quic.client(port) as client:
        first = await client.request(b"GET", b"/one")
        second = await client.request(b"GET", b"/two")

    assert (first[0], first[2]) == (200, b"well")
    assert (second[0], second[2]) == (200, b"well")
    assert [r.target for r in sick.requests] == ["/one", "/two"]
    assert [r.target for r in well.requests] == ["/one", "/two"]
    assert quic.stats.retries == 2
