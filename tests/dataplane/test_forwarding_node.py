"""Seed 002 advanced forwarding through a real node: each matcher and each action, with real
requests over real sockets; health checks of groups only rules use; schema refusals."""

from __future__ import annotations

import http.client
import socket

import pytest

from dataplane.config import ConfigError, Snapshot
from tests.dataplane.conftest import (
    WAIT,
    get,
    listener,
    server_group,
    snapshot,
    wait_until,
)
from tests.fixtures.ports import free_port


def forward(rule_id: str, group_id: str, *conditions: dict) -> dict:
    return {
        "id": rule_id,
        "conditions": list(conditions),
        "action": {"type": "forward", "server_group_id": group_id},
    }


RULES = [
    forward("r-host", "sgp-img", {"type": "host", "values": ["*.img.example.com"]}),
    forward("r-prefix", "sgp-api", {"type": "path", "values": ["/api/"]}),
    {
        "id": "r-exact",
        "conditions": [{"type": "path", "match": "exact", "values": ["/old"]}],
        "action": {"type": "redirect", "status_code": 301, "path": "/new"},
    },
    forward("r-regex", "sgp-api", {"type": "path", "match": "regex", "values": ["^/v[0-9]+/"]}),
    {
        "id": "r-method",
        "conditions": [{"type": "method", "values": ["DELETE"]}],
        "action": {
            "type": "fixed_response",
            "status_code": 403,
            "content_type": "application/json",
            "body": '{"error": "read only"}',
        },
    },
    forward("r-header", "sgp-api", {"type": "header", "name": "X-Canary", "values": ["yes", "t*"]}),
    forward("r-query", "sgp-api", {"type": "query", "values": ["beta=1"]}),
    {
        "id": "r-source",
        "conditions": [
            {"type": "source_ip", "values": ["10.0.0.0/8"]},
            {"type": "path", "values": ["/internal"]},
        ],
        "action": {"type": "fixed_response", "body": "internal only"},
    },
    {
        "id": "r-https",
        "conditions": [{"type": "path", "values": ["/secure"]}],
        "action": {"type": "redirect", "protocol": "https", "status_code": 308},
    },
]


@pytest.fixture
def routed(dataplane, backends):
    """An HTTP listener whose default group is `web`, with rules to `api` and `img`."""
    web, api, img = backends("web"), backends("api"), backends("img")
    port = free_port()
    dataplane.apply(
        snapshot(
            [
                listener(
                    port,
                    forwarding_rules=RULES,
                    retrieve_client_ip={"enabled": True, "trusted": ["127.0.0.1"]},
                )
            ],
            [
                server_group(web),
                server_group(api, group_id="sgp-api"),
                server_group(img, group_id="sgp-img"),
            ],
        )
    )
    return port


@pytest.mark.parametrize(
    ("path", "headers", "method", "expected"),
    [
        ("/", {}, "GET", b"web"),
        ("/apiary", {}, "GET", b"web"),
        ("/api/users", {}, "GET", b"api"),
        ("/x", {"Host": "cdn.img.example.com"}, "GET", b"img"),
        ("/x", {"Host": "CDN.IMG.example.com:8080"}, "GET", b"img"),
        ("/x", {"Host": "img.example.com"}, "GET", b"web"),
        ("/v2/items", {}, "GET", b"api"),
        ("/a/v2/items", {}, "GET", b"web"),
        ("/x", {"X-Canary": "YES"}, "GET", b"api"),
        ("/x", {"X-Canary": "true"}, "GET", b"api"),
        ("/x", {"X-Canary": "no"}, "GET", b"web"),
        ("/x?alpha=2&beta=1", {}, "GET", b"api"),
        ("/x?beta=10", {}, "GET", b"web"),
        ("/internal", {"X-Forwarded-For": "192.168.1.1"}, "GET", b"web"),
        ("/old/page", {}, "GET", b"web"),
    ],
)
def test_forward_matchers(routed, path, headers, method, expected):
    status, _, body = get(routed, path, headers=headers, method=method)
    assert (status, body) == (200, expected)


def test_a_request_matching_no_rule_keeps_the_default_group_and_its_headers(routed, backends):
    status, _, body = get(routed, "/api/v1", headers={"X-Canary": "yes"})
    # The first matching rule wins: /api/ goes to api before the header rule is tried.
    assert (status, body) == (200, b"api")


def test_redirect_keeps_the_host_and_the_listener_port(routed):
    # The port is the listener's, the one the client reached; a port in Host is not trusted.
    status, headers, body = get(routed, "/old?q=1", headers={"Host": "www.example.com:8080"})
    assert status == 301
    assert headers["Location"] == f"http://www.example.com:{routed}/new?q=1"
    assert headers["Content-Length"] == "0"
    assert body == b""


def test_redirect_to_https_uses_its_default_port(routed):
    status, headers, _ = get(routed, "/secure/login", headers={"Host": "shop.example.com:8080"})
    assert status == 308
    assert headers["Location"] == "https://shop.example.com/secure/login"


def test_fixed_response_by_method(routed):
    status, headers, body = get(routed, "/anything", method="DELETE")
    assert status == 403
    assert headers["Content-Type"] == "application/json"
    assert body == b'{"error": "read only"}'


def test_fixed_response_to_head_has_no_body(routed):
    connection = http.client.HTTPConnection("127.0.0.1", routed, timeout=WAIT)
    try:
        connection.request("HEAD", "/internal", headers={"X-Forwarded-For": "10.1.2.3"})
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Length") == str(len(b"internal only"))
        assert response.read() == b""
        # The connection stays usable: the next request goes to a backend.
        connection.request("GET", "/api/next")
        response = connection.getresponse()
        assert (response.status, response.read()) == (200, b"api")
    finally:
        connection.close()


def test_source_ip_uses_the_retrieved_client_ip(routed):
    status, headers, body = get(routed, "/internal", headers={"X-Forwarded-For": "10.1.2.3"})
    assert (status, body) == (200, b"internal only")
    assert headers["Content-Type"] == "text/plain"


def test_local_answers_and_forwarding_mix_on_one_pipelined_connection(routed):
    requests = (
        b"GET /old HTTP/1.1\r\nHost: a.example.com\r\n\r\n"
        b"GET /api/one HTTP/1.1\r\nHost: a.example.com\r\n\r\n"
        b"DELETE /x HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", routed), timeout=WAIT) as sock:
        sock.sendall(requests)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    first = data.index(b"HTTP/1.1 301")
    second = data.index(b"HTTP/1.1 200")
    third = data.index(b"HTTP/1.1 403")
    assert first < second < third
    assert b"\r\n\r\napi" in data


def test_a_fixed_response_to_a_request_with_a_body_closes_after_answering(routed):
    status, headers, body = get(routed, "/x", method="DELETE", body=b"payload" * 10)
    assert status == 403
    assert headers["Connection"] == "close"
    assert body == b'{"error": "read only"}'


def test_a_group_used_only_by_rules_is_health_checked(dataplane, backends):
    web, api = backends("web"), backends("api")
    dead = free_port()
    group = server_group(
        api,
        group_id="sgp-api",
        health_check={"protocol": "tcp", "interval": 1, "timeout": 1, "unhealthy_threshold": 1},
    )
    group["servers"].append({"id": "srv-dead", "address": "127.0.0.1", "port": dead})
    port = free_port()
    dataplane.apply(
        snapshot(
            [
                listener(
                    port, forwarding_rules=[forward("r1", "sgp-api", RULES[1]["conditions"][0])]
                )
            ],
            [server_group(web), group],
        )
    )

    def dead_is_out() -> bool:
        runtime = dataplane.node.groups.get("sgp-api")
        return runtime is not None and any(
            b.id == "srv-dead" and not b.healthy for b in runtime.backends
        )

    assert wait_until(dead_is_out)
    for _ in range(4):
        assert get(port, "/api/x")[2] == b"api"


def test_a_rule_group_without_servers_answers_503(dataplane, backends):
    web = backends("web")
    port = free_port()
    empty = {"id": "sgp-empty", "backend_protocol": "http", "health_check": {"enabled": False}}
    dataplane.apply(
        snapshot(
            [
                listener(
                    port, forwarding_rules=[forward("r1", "sgp-empty", RULES[1]["conditions"][0])]
                )
            ],
            [server_group(web), empty],
        )
    )
    assert get(port, "/api/x")[0] == 503
    assert get(port, "/web")[2] == b"web"


def test_changing_the_rules_applies_to_new_requests(dataplane, backends):
    web, api = backends("web"), backends("api")
    port = free_port()
    groups = [server_group(web), server_group(api, group_id="sgp-api")]
    dataplane.apply(snapshot([listener(port)], groups))
    assert get(port, "/api/x")[2] == b"web"
    rule = forward("r1", "sgp-api", {"type": "path", "values": ["/api/"]})
    dataplane.apply(snapshot([listener(port, forwarding_rules=[rule])], groups, generation=2))
    assert get(port, "/api/x")[2] == b"api"
    # The group's configuration changes: the listener follows it.
    other = backends("other")
    groups[1] = server_group(other, group_id="sgp-api")
    dataplane.apply(snapshot([listener(port, forwarding_rules=[rule])], groups, generation=3))
    assert get(port, "/api/x")[2] == b"other"


def test_https_listener_forwards_by_rule_and_redirects_keeping_https(dataplane, backends, ca):
    from tests.dataplane.conftest import certificate_entry, unverified_client

    web, api = backends("web"), backends("api")
    port = free_port()
    rules = [
        forward("r1", "sgp-api", {"type": "path", "values": ["/api/"]}),
        {
            "id": "r2",
            "conditions": [{"type": "path", "values": ["/moved"]}],
            "action": {"type": "redirect", "path": "/here"},
        },
    ]
    dataplane.apply(
        snapshot(
            [
                listener(
                    port,
                    protocol="https",
                    default_certificate_id="cert-www",
                    forwarding_rules=rules,
                )
            ],
            [server_group(web), server_group(api, group_id="sgp-api")],
            certificates=[certificate_entry("cert-www", ca.issue_cert("www.example.com"))],
        )
    )
    connection = http.client.HTTPSConnection(
        "127.0.0.1", port, timeout=WAIT, context=unverified_client()
    )
    try:
        connection.request("GET", "/api/x", headers={"Host": "www.example.com"})
        response = connection.getresponse()
        assert response.read() == b"api"
        connection.request("GET", "/moved", headers={"Host": "www.example.com"})
        response = connection.getresponse()
        response.read()
        assert response.status == 302
        assert response.getheader("Location") == f"https://www.example.com:{port}/here"
    finally:
        connection.close()


# -- schema ----------------------------------------------------------------------------------------


def _snapshot_with(listener_fields: dict, groups: list[dict] | None = None) -> dict:
    return {
        "instance_id": "lb-test0001",
        "generation": 1,
        "listeners": [
            {"id": "lsn-a", "protocol": "http", "port": 80, "server_group_id": "sgp-web"}
            | listener_fields
        ],
        "server_groups": groups
        or [
            {"id": "sgp-web"},
            {"id": "sgp-tcp", "backend_protocol": "tcp"},
        ],
    }


def reasons(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        Snapshot.from_dict(raw)
    return info.value.reasons


def test_rules_round_trip_through_json():
    raw = _snapshot_with({"forwarding_rules": RULES[:3]})
    raw["server_groups"] += [{"id": "sgp-api"}, {"id": "sgp-img"}]
    decoded = Snapshot.from_dict(raw)
    assert Snapshot.from_json(decoded.to_json()) == decoded
    assert decoded.listeners[0].forwarding_rules[2].action.status_code == 301


def test_rules_are_refused_on_tcp_listeners():
    raw = _snapshot_with(
        {"protocol": "tcp", "server_group_id": "sgp-tcp", "forwarding_rules": RULES[1:2]}
    )
    assert reasons(raw) == [
        "listeners[0].forwarding_rules: only http, https and quic listeners have forwarding rules"
    ]


def test_rules_must_forward_to_existing_http_groups():
    raw = _snapshot_with(
        {
            "forwarding_rules": [
                forward("r1", "sgp-tcp", {"type": "path", "values": ["/a"]}),
                forward("r2", "sgp-nope", {"type": "path", "values": ["/b"]}),
            ]
        }
    )
    assert reasons(raw) == [
        "listeners[0].forwarding_rules[1].action.server_group_id: no server group 'sgp-nope'",
        "listeners[0].forwarding_rules[0].action.server_group_id: http listeners forward to http "
        "or https server groups, sgp-tcp is tcp",
    ]


def test_rule_problems_carry_their_path():
    raw = _snapshot_with(
        {
            "forwarding_rules": [
                {
                    "id": "r1",
                    "conditions": [{"type": "path", "values": ["no-slash"]}],
                    "action": {"type": "redirect"},
                }
            ]
        }
    )
    problems = reasons(raw)
    assert "listeners[0].forwarding_rules[0].conditions[0].values[0]: must start with /" in problems
    assert any(
        p.startswith("listeners[0].forwarding_rules[0].action: a redirect") for p in problems
    )


def test_a_rule_group_with_slow_start_needs_a_weighted_scheduler():
    raw = _snapshot_with(
        {
            "scheduler": "round_robin",
            "forwarding_rules": [forward("r1", "sgp-slow", {"type": "path", "values": ["/a"]})],
        },
        groups=[{"id": "sgp-web"}, {"id": "sgp-slow", "slow_start": True}],
    )
    assert reasons(raw) == [
        "listeners[0].forwarding_rules[0].action.server_group_id: server group sgp-slow uses "
        "slow start, which needs weighted_round_robin or weighted_least_connections, not "
        "round_robin"
    ]
