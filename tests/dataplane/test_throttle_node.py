"""QPS per client IP through a real node (seeds 001/003): real clients over real sockets, the 429
rate measured at the client, what the recording backend received, the counters, the access log
and the Prometheus text, for HTTP/1.1, HTTP/2 and HTTP/3 requests; hostile X-Forwarded-For; IPv6
clients counted per /64, and a flood of throttled connections leaving no descriptor behind.

The limits are 10 or 5 a second with a burst of as many: a burst of requests sent as fast as one
client can lets the burst through, plus what the elapsed time earns back. The bounds allow for a
slow machine (a second of sending earns 10 more at most)."""

from __future__ import annotations

import asyncio
import http.client
import os
import time

import grpc
from aioquic.asyncio.client import connect as quic_connect
from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration

from dataplane.metrics import ControlCounters, render
from tests.dataplane.conftest import (
    WAIT,
    certificate_entry,
    listener,
    server_group,
    snapshot,
    wait_until,
)
from tests.dataplane.h2client import H2Client
from tests.dataplane.test_grpc import SERVICE, EchoServer, grpc_group
from tests.dataplane.test_https import https_listener, trusting
from tests.dataplane.test_quic import SERVER_NAME, H3Client
from tests.fixtures.ports import free_port

TRUSTED_PROXY = {"enabled": True, "trusted": ["127.0.0.1"]}


def burst(port: int, count: int, path: str = "/", headers=None):
    """`count` requests one after another on one keep-alive connection: (status, headers, body)
    of each."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    answers = []
    try:
        for _ in range(count):
            fields = headers() if callable(headers) else headers or {}
            connection.request("GET", path, headers=fields)
            response = connection.getresponse()
            answers.append((response.status, dict(response.getheaders()), response.read()))
    finally:
        connection.close()
    return answers


def statuses(answers) -> list[int]:
    return [status for status, _, _ in answers]


def test_a_burst_of_fifty_at_ten_per_second_lets_about_ten_through(dataplane, backends):
    web = backends("web")
    port = free_port()
    result = dataplane.apply(
        snapshot([listener(port, qps_per_client_ip=10, access_log=True)], [server_group(web)])
    )
    assert result["lsn-web"]["status"] == "running"

    answers = burst(port, 50)

    passed = statuses(answers).count(200)
    assert 10 <= passed <= 20
    assert statuses(answers).count(429) == 50 - passed
    # The burst goes first; what passes later was earned back.
    assert statuses(answers)[:10] == [200] * 10
    for status, headers, body in answers:
        if status == 429:
            assert int(headers["Retry-After"]) >= 1
            assert headers["Content-Type"] == "text/plain"
            assert body == b"429 Too Many Requests\n"
            assert "Connection" not in headers  # the connection stays open
    # Only the requests that passed reached the server.
    assert len(web.requests) == passed

    counters = dataplane.stats("lsn-web")
    assert counters["throttled_requests"] == 50 - passed
    assert counters["responses"]["4xx"] == 50 - passed
    assert counters["total_connections"] == 1  # every answer kept the connection
    lines = dataplane.loop_thread.call(lambda: dataplane.node.access_log("lsn-web"))["lines"]
    throttled = [line for line in lines if line["termination"] == "throttled"]
    assert len(throttled) == 50 - passed
    assert {line["status"] for line in throttled} == {429}
    text = render(dataplane.status(), ControlCounters()).decode()
    assert (
        f'ferry_listener_throttled_requests_total{{listener="lsn-web",port="{port}",'
        f'protocol="http"}} {float(50 - passed)}'
    ) in text


def test_clients_behind_a_trusted_proxy_are_throttled_each_by_their_own_address(
    dataplane, backends
):
    web = backends("web")
    port = free_port()
    dataplane.apply(
        snapshot(
            [listener(port, qps_per_client_ip=5, retrieve_client_ip=TRUSTED_PROXY)],
            [server_group(web)],
        )
    )
    first = burst(port, 20, headers={"X-Forwarded-For": "198.51.100.1"})
    second = burst(port, 20, headers={"X-Forwarded-For": "198.51.100.2"})

    for answers in (first, second):
        assert 5 <= statuses(answers).count(200) <= 15
        assert statuses(answers)[:5] == [200] * 5
    reached = [request.header("X-Forwarded-For") for request in web.requests]
    assert reached.count("198.51.100.1, 127.0.0.1") == statuses(first).count(200)
    assert reached.count("198.51.100.2, 127.0.0.1") == statuses(second).count(200)


def test_a_forged_x_forwarded_for_from_an_untrusted_peer_does_not_dodge_the_limit(
    dataplane, backends
):
    """The peer (127.0.0.1) is not a trusted proxy: whatever it writes in X-Forwarded-For, it is
    its own client, so new addresses there buy it nothing."""
    web = backends("web")
    port = free_port()
    dataplane.apply(
        snapshot(
            [
                listener(
                    port,
                    qps_per_client_ip=5,
                    retrieve_client_ip={"enabled": True, "trusted": ["10.0.0.0/8"]},
                )
            ],
            [server_group(web)],
        )
    )
    counter = iter(range(1000))
    answers = burst(port, 30, headers=lambda: {"X-Forwarded-For": f"203.0.113.{next(counter)}"})
    assert 5 <= statuses(answers).count(200) <= 15
    assert len(web.requests) == statuses(answers).count(200)


def test_addresses_a_client_prepends_to_x_forwarded_for_do_not_dodge_the_limit(dataplane, backends):
    """Behind a trusted proxy, the client is the rightmost untrusted address: a client that
    prepends new addresses (hundreds of them) stays the same client."""
    web = backends("web")
    port = free_port()
    dataplane.apply(
        snapshot(
            [listener(port, qps_per_client_ip=5, retrieve_client_ip=TRUSTED_PROXY)],
            [server_group(web)],
        )
    )
    counter = iter(range(1000))

    def forged() -> dict[str, str]:
        n = next(counter)
        padding = ", ".join(f"192.0.2.{(n + i) % 250}" for i in range(300))
        return {"X-Forwarded-For": f"{padding}, 198.51.100.9"}

    answers = burst(port, 30, headers=forged)
    assert 5 <= statuses(answers).count(200) <= 15
    assert len(web.requests) == statuses(answers).count(200)


def open_fds() -> int:
    # The node runs in this process (tests/dataplane/conftest.py), its sockets with the test's.
    return len(os.listdir("/proc/self/fd"))


def test_ipv6_clients_in_one_64_hit_the_limit_together(dataplane, backends):
    """Behind a trusted proxy, an IPv6 client is counted by its /64: a second address from the
    same /64 finds the first one's budget spent, and an address from the next /64 does not."""
    web = backends("web")
    port = free_port()
    dataplane.apply(
        snapshot(
            [listener(port, qps_per_client_ip=1, retrieve_client_ip=TRUSTED_PROXY)],
            [server_group(web)],
        )
    )
    # One request a second: the three requests take milliseconds, far inside one second.
    first = burst(port, 1, headers={"X-Forwarded-For": "2001:db8:1:2::a"})
    same_64 = burst(port, 1, headers={"X-Forwarded-For": "2001:db8:1:2:ffff:ffff:ffff:b"})
    next_64 = burst(port, 1, headers={"X-Forwarded-For": "2001:db8:1:3::a"})

    assert statuses(first + same_64 + next_64) == [200, 429, 200]
    assert [request.header("X-Forwarded-For") for request in web.requests] == [
        "2001:db8:1:2::a, 127.0.0.1",
        "2001:db8:1:3::a, 127.0.0.1",
    ]
    assert dataplane.stats("lsn-web")["throttled_requests"] == 1


def test_a_flood_of_throttled_requests_from_one_64_leaves_no_descriptor_behind(dataplane, backends):
    """A client rotating through its /64, a new address and a new connection each request: it
    stays throttled, takes one entry of the limiter's table, and every connection's descriptor
    goes when the connection does."""
    web = backends("web")
    port = free_port()
    dataplane.apply(
        snapshot(
            [listener(port, qps_per_client_ip=1, retrieve_client_ip=TRUSTED_PROXY)],
            [server_group(web)],
        )
    )
    counter = iter(range(1, 100_000))

    def rotated() -> dict[str, str]:
        return {"X-Forwarded-For": f"2001:db8:1:2::{next(counter):x}"}

    started = time.monotonic()
    # The request that passes opens the backend connection, which the pool keeps: before counts it.
    assert statuses(burst(port, 1, headers=rotated)) == [200]
    before = open_fds()
    answers = []
    for _ in range(100):
        answers += burst(port, 1, headers=rotated)
    answers += burst(port, 100, headers=rotated)  # and as many on one keep-alive connection
    elapsed = time.monotonic() - started

    # At one a second, what passed is what the elapsed time earned back.
    assert statuses(answers).count(200) <= int(elapsed)
    assert statuses(answers).count(429) >= 200 - int(elapsed)
    assert len(dataplane.node.listeners["lsn-web"].settings.throttle) == 1
    assert wait_until(lambda: open_fds() <= before), (open_fds(), before)


def test_a_rules_limit_applies_only_to_the_requests_it_matches(dataplane, backends):
    web, api = backends("web"), backends("api")
    port = free_port()
    rules = [
        {
            "id": "r-api",
            "conditions": [{"type": "path", "values": ["/api/"]}],
            "action": {"type": "forward", "server_group_id": "sgp-api"},
            "qps_per_client_ip": 5,
        }
    ]
    dataplane.apply(
        snapshot(
            [listener(port, forwarding_rules=rules)],
            [server_group(web), server_group(api, group_id="sgp-api")],
        )
    )
    to_api = burst(port, 20, "/api/items")
    to_web = burst(port, 20, "/")

    assert 5 <= statuses(to_api).count(200) <= 15
    assert statuses(to_web) == [200] * 20
    assert len(api.requests) == statuses(to_api).count(200)
    assert len(web.requests) == 20
    counters = dataplane.stats("lsn-web")
    assert counters["throttled_by_rule"] == {"r-api": statuses(to_api).count(429)}
    text = render(dataplane.status(), ControlCounters()).decode()
    assert 'ferry_rule_throttled_requests_total{listener="lsn-web"' in text


def test_the_listener_limit_is_checked_before_a_rules(dataplane, backends):
    web = backends("web")
    port = free_port()
    rules = [
        {
            "id": "r-fixed",
            "conditions": [{"type": "path", "values": ["/fixed"]}],
            "action": {"type": "fixed_response", "body": "fixed"},
            "qps_per_client_ip": 100,
        }
    ]
    dataplane.apply(
        snapshot([listener(port, qps_per_client_ip=5, forwarding_rules=rules)], [server_group(web)])
    )
    answers = burst(port, 20, "/fixed")
    assert 5 <= statuses(answers).count(200) <= 15
    counters = dataplane.stats("lsn-web")
    assert counters["throttled_requests"] == statuses(answers).count(429)
    assert counters["throttled_by_rule"] == {}


def test_a_throttled_request_with_a_body_on_its_way_closes_the_connection(dataplane, backends):
    """A body the node will not read cannot be skipped safely: after the 429 the connection
    closes, as after a rule's fixed response."""
    web = backends("web")
    port = free_port()
    dataplane.apply(snapshot([listener(port, qps_per_client_ip=1)], [server_group(web)]))
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        connection.request("GET", "/")
        assert connection.getresponse().read() == b"web"
        connection.putrequest("POST", "/upload")
        connection.putheader("Content-Length", "100000")
        connection.endheaders(b"x" * 10)
        response = connection.getresponse()
        assert (response.status, response.getheader("Connection")) == (429, "close")
    finally:
        connection.close()
    assert [request.target for request in web.requests] == ["/"]


def test_an_http2_stream_over_the_limit_gets_429_and_the_connection_lives(dataplane, backends, ca):
    web = backends("web")
    port = free_port()
    dataplane.apply(
        snapshot(
            [https_listener(port, http2=True, qps_per_client_ip=5)],
            [server_group(web)],
            certificates=[certificate_entry("cert-default", ca.issue_cert("www.example.com"))],
        )
    )
    with H2Client(port, trusting(ca)) as client:
        assert client.alpn == "h2"
        responses = client.wait(*[client.request("GET", f"/{n}") for n in range(20)])
        again = client.get("/after")
    codes = [response.status for response in responses]
    assert 5 <= codes.count(200) <= 15
    assert codes.count(429) == 20 - codes.count(200)
    for response in responses:
        if response.status == 429:
            assert int(response.header("retry-after")) >= 1
            assert response.body == b"429 Too Many Requests\n"
            assert response.reset is None
    assert again.status in (200, 429)  # the same connection still answers
    assert len(web.requests) == codes.count(200) + (again.status == 200)
    assert dataplane.stats("lsn-tls")["throttled_requests"] == codes.count(429) + (
        again.status == 429
    )


def test_http3_requests_over_the_limit_get_429(dataplane, backends, ca):
    web = backends("web")
    port = free_port()
    result = dataplane.apply(
        snapshot(
            [
                listener(
                    port,
                    protocol="quic",
                    listener_id="lsn-quic",
                    default_certificate_id="cert-quic",
                    qps_per_client_ip=5,
                )
            ],
            [server_group(web)],
            certificates=[certificate_entry("cert-quic", ca.issue_cert(SERVER_NAME))],
        )
    )
    assert result["lsn-quic"]["status"] == "running"

    async def run() -> list[tuple[int, dict[bytes, bytes], bytes]]:
        configuration = QuicConfiguration(
            is_client=True, alpn_protocols=list(H3_ALPN), server_name=SERVER_NAME
        )
        configuration.load_verify_locations(cadata=ca.cert_pem.bytes())
        async with asyncio.timeout(WAIT * 2):
            async with quic_connect(
                "127.0.0.1", port, configuration=configuration, create_protocol=H3Client
            ) as client:
                return [
                    await client.request(b"GET", f"/{n}".encode())  # type: ignore[attr-defined]
                    for n in range(20)
                ]

    answers = asyncio.run(run())
    codes = [status for status, _, _ in answers]
    assert 5 <= codes.count(200) <= 15
    assert codes[:5] == [200] * 5
    for status, head, body in answers:
        if status == 429:
            assert int(head[b"retry-after"]) >= 1
            assert body == b"429 Too Many Requests\n"
    assert len(web.requests) == codes.count(200)
    assert dataplane.stats("lsn-quic")["throttled_requests"] == codes.count(429)


def test_a_change_to_the_listener_does_not_hand_out_a_fresh_burst(dataplane, backends):
    web = backends("web")
    port = free_port()

    def apply(generation: int, idle_timeout: int) -> None:
        listeners = [listener(port, qps_per_client_ip=1, idle_timeout=idle_timeout)]
        dataplane.apply(snapshot(listeners, [server_group(web)], generation=generation))

    apply(1, 60)
    before = dataplane.node.listeners["lsn-web"].settings
    assert statuses(burst(port, 2)) == [200, 429]
    apply(2, 61)
    after = dataplane.node.listeners["lsn-web"].settings
    assert after is not before  # recompiled
    assert len(after.throttle) == 1  # the client's entry came along
    # The client's turn comes a second after its first request, whatever the node applied since
    # (applying takes milliseconds).
    assert statuses(burst(port, 1)) == [429]


def test_grpc_calls_over_the_limit_fail_as_resource_exhausted(dataplane, ca):
    """An HTTPS listener whose group speaks gRPC: its calls are limited by the peer's address,
    and a call over the limit ends with gRPC's rate-limit status, which gRPC clients read."""
    server = EchoServer("a")
    port = free_port()
    try:
        result = dataplane.apply(
            snapshot(
                [https_listener(port, http2=True, qps_per_client_ip=5)],
                [grpc_group(server)],
                certificates=[certificate_entry("cert-default", ca.issue_cert("grpc.example.com"))],
            )
        )
        assert result["lsn-tls"]["status"] == "running", result
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
        with grpc.secure_channel(
            f"127.0.0.1:{port}",
            credentials,
            options=[("grpc.ssl_target_name_override", "grpc.example.com")],
        ) as channel:
            say = channel.unary_unary(f"/{SERVICE}/Say")
            codes = []
            for _ in range(20):
                try:
                    say(b"x", timeout=WAIT)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as error:
                    codes.append(error.code())
    finally:
        server.stop()
    passed = codes.count(grpc.StatusCode.OK)
    assert 5 <= passed <= 15
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 20 - passed
    assert len(server.metadata) == passed
    assert dataplane.stats("lsn-tls")["throttled_requests"] == 20 - passed
