"""A listener's own error pages (issue 20) through a real node: the 502, 503 and 504 the node
answers itself become the listener's pages, with the maintenance page for a group whose servers
are all in Maintenance; HTTP/1.1 (HEAD, pipelining), HTTP/2 and HTTP/3 alike. A backend's own
5xx and the node's other answers stay as they are. The schema refuses what it cannot serve."""

from __future__ import annotations

import email.utils
import socket
from typing import Any

import pytest

from dataplane.config import ConfigError, Snapshot
from dataplane.error_pages import ErrorPages
from dataplane.protocols import ListenerSettings
from dataplane.stats import ListenerStats
from tests.dataplane.conftest import (
    WAIT,
    Reply,
    certificate_entry,
    get,
    listener,
    raw_exchange,
    read_until_closed,
    server_group,
    snapshot,
    split_responses,
)
from tests.dataplane.h2client import H2Client
from tests.dataplane.test_https import https_listener, trusting
from tests.dataplane.test_quic import Server, closed_tcp_port, leaf, quic  # noqa: F401 (fixtures)
from tests.fixtures.ports import free_port

PAGE_502 = "<h1>Our backend is down</h1>"
PAGE_503 = "<h1>No server right now</h1>"
PAGE_504 = '{"error": "the backend took too long"}'
MAINTENANCE = "Back at 14:00 \N{EM DASH} planned maintenance"
PAGES = [
    {"status": "502", "content_type": "text/html", "body": PAGE_502},
    {"status": "503", "content_type": "text/html", "body": PAGE_503},
    {"status": "504", "content_type": "application/json", "body": PAGE_504},
    {"status": "maintenance", "content_type": "text/plain", "body": MAINTENANCE},
]


def dead_server(name: str) -> dict[str, Any]:
    """A server whose port refuses connections."""
    return {"id": f"srv-{name}", "address": "127.0.0.1", "port": closed_tcp_port(), "weight": 100}


def group_of(*servers: dict[str, Any], group_id: str = "sgp-web") -> dict[str, Any]:
    return {
        "id": group_id,
        "name": group_id,
        "backend_protocol": "http",
        "servers": list(servers),
        "health_check": {"enabled": False},
    }


def in_maintenance(group: dict[str, Any]) -> dict[str, Any]:
    for server in group["servers"]:
        server["state"] = "maintenance"
    return group


def start(dataplane, groups: list[dict[str, Any]], *, generation: int = 1, **settings: Any) -> int:
    port = free_port()
    settings.setdefault("error_pages", PAGES)
    result = dataplane.apply(snapshot([listener(port, **settings)], groups, generation=generation))
    assert result["lsn-web"]["status"] == "running", result
    return port


def assert_page(headers: dict[str, str], content_type: str, body: str) -> None:
    assert headers["Content-Type"] == content_type
    assert headers["Content-Length"] == str(len(body.encode()))
    assert headers["Cache-Control"] == "no-store"
    assert headers["Connection"] == "close"
    assert email.utils.parsedate_to_datetime(headers["Date"]) is not None


# -- the node's own answers become the pages -------------------------------------------------------


def test_a_dead_backend_gets_the_502_page(dataplane):
    # Both servers refuse: whatever the retries, the node answers 502 itself.
    port = start(dataplane, [group_of(dead_server("a"), dead_server("b"))])

    status, headers, body = get(port, "/cart")

    assert status == 502
    assert body == PAGE_502.encode()
    assert_page(headers, "text/html; charset=utf-8", PAGE_502)
    assert dataplane.stats("lsn-web")["responses"]["5xx"] == 1


def test_no_eligible_server_gets_the_503_page(dataplane, backends):
    web = backends("web")
    port = start(dataplane, [server_group((web, 0))])

    status, headers, body = get(port)

    assert (status, body) == (503, PAGE_503.encode())
    assert_page(headers, "text/html; charset=utf-8", PAGE_503)
    assert web.requests == []


def test_a_slow_backend_gets_the_504_page(dataplane, backends):
    slow = backends("slow", lambda request: Reply(body=b"late", delay=WAIT))
    port = start(dataplane, [server_group(slow)], response_timeout=1)

    status, headers, body = get(port, "/report")

    assert (status, body) == (504, PAGE_504.encode())
    assert_page(headers, "application/json", PAGE_504)
    # The request did reach the backend: the page replaces only the answer it never gave.
    assert [request.target for request in slow.requests] == ["/report"]


def test_every_server_in_maintenance_gets_the_maintenance_page(dataplane, backends):
    a, b = backends("a"), backends("b")
    port = start(dataplane, [in_maintenance(server_group(a, b))])

    status, headers, body = get(port)

    assert status == 503
    assert body == MAINTENANCE.encode()
    assert_page(headers, "text/plain; charset=utf-8", MAINTENANCE)
    assert a.requests == b.requests == []


def test_without_a_maintenance_page_maintenance_gets_the_503_page_or_the_plain_503(
    dataplane, backends
):
    web = backends("web")
    pages = [page for page in PAGES if page["status"] != "maintenance"]
    port = start(dataplane, [in_maintenance(server_group(web))], error_pages=pages)
    assert get(port)[0::2] == (503, PAGE_503.encode())

    plain_port = start(
        dataplane,
        [in_maintenance(server_group(web))],
        generation=2,
        error_pages=[PAGES[0]],
    )
    assert get(plain_port)[0::2] == (503, b"503 Service Unavailable\n")
    assert web.requests == []


def test_a_group_only_partly_in_maintenance_gets_the_503_page(dataplane, backends):
    up, resting = backends("up"), backends("resting")
    group = server_group((up, 0), resting)
    group["servers"][1]["state"] = "maintenance"
    port = start(dataplane, [group])

    assert get(port)[0::2] == (503, PAGE_503.encode())
    assert up.requests == resting.requests == []


def test_a_rule_forward_group_in_maintenance_gets_the_maintenance_page(dataplane, backends):
    web, shop = backends("web"), backends("shop")
    rule = {
        "id": "r-shop",
        "conditions": [{"type": "path", "values": ["/shop/"]}],
        "action": {"type": "forward", "server_group_id": "sgp-shop"},
    }
    port = start(
        dataplane,
        [server_group(web), in_maintenance(server_group(shop, group_id="sgp-shop"))],
        forwarding_rules=[rule],
    )

    assert get(port, "/shop/cart")[0::2] == (503, MAINTENANCE.encode())
    assert get(port, "/home")[0::2] == (200, b"web")
    assert [r.target for r in web.requests] == ["/home"]
    assert shop.requests == []


def test_head_gets_the_head_only(dataplane, backends):
    web = backends("web")
    port = start(dataplane, [server_group((web, 0))])

    data = raw_exchange(port, b"HEAD / HTTP/1.1\r\nHost: example.com\r\n\r\n")

    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    # The length still says the page's (RFC 9110 9.3.2); no body follows.
    assert b"\r\nContent-Length: %d\r\n" % len(PAGE_503) in head + b"\r\n"
    assert rest == b""
    assert web.requests == []


def test_head_without_pages_gets_the_plain_head_only(dataplane, backends):
    web = backends("web")
    port = start(dataplane, [server_group((web, 0))], error_pages=[])

    data = raw_exchange(port, b"HEAD / HTTP/1.1\r\nHost: example.com\r\n\r\n")

    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\nContent-Length: %d\r\n" % len(b"503 Service Unavailable\n") in head + b"\r\n"
    assert rest == b""


# -- what stays as it is ---------------------------------------------------------------------------


def test_a_backend_5xx_passes_through_unchanged(dataplane, backends):
    app = backends(
        "app",
        lambda request: Reply(
            status=503, headers=[("Content-Type", "text/plain")], body=b"app says busy"
        ),
    )
    port = start(dataplane, [server_group(app)], retries=0)

    status, headers, body = get(port)

    assert (status, body) == (503, b"app says busy")
    assert headers["Content-Type"] == "text/plain"
    assert "Cache-Control" not in headers
    assert len(app.requests) == 1


def test_other_answers_of_the_node_stay_plain(dataplane, backends):
    web = backends("web")
    port = start(dataplane, [server_group(web)])

    data = raw_exchange(port, b"GET / HTTP/1.1\r\n\r\n")

    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert data.endswith(b"\r\n\r\n400 Bad Request\n")
    assert web.requests == []


def test_keep_alive_requests_then_a_page_close_the_connection(dataplane, backends):
    """Pipelined requests: those the backend answers keep the connection, the node's page ends
    it (as its plain answers do) and nothing after it is read."""
    web, shop = backends("web"), backends("shop")
    rule = {
        "id": "r-shop",
        "conditions": [{"type": "path", "values": ["/shop/"]}],
        "action": {"type": "forward", "server_group_id": "sgp-shop"},
    }
    port = start(
        dataplane,
        [server_group(web), in_maintenance(server_group(shop, group_id="sgp-shop"))],
        forwarding_rules=[rule],
    )
    requests = b"".join(
        b"GET %s HTTP/1.1\r\nHost: example.com\r\n\r\n" % path
        for path in (b"/one", b"/two", b"/shop/cart", b"/after")
    )

    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(requests)
        data = read_until_closed(sock)

    assert split_responses(data) == [(200, b"web"), (200, b"web"), (503, MAINTENANCE.encode())]
    assert [r.target for r in web.requests] == ["/one", "/two"]
    assert shop.requests == []


def test_a_listener_without_pages_compiles_none():
    """The hot path's whole cost for a listener without pages: one attribute that is None."""
    data = snapshot([listener(8080)], [group_of(dead_server("a"))])
    parsed = Snapshot.from_dict(data)
    settings = ListenerSettings(
        parsed.listeners[0], parsed, group=None, tls=None, pool=None, stats=ListenerStats()
    )
    assert settings.error_pages is None


# -- HTTP/2 and HTTP/3 -----------------------------------------------------------------------------


def test_an_http2_stream_gets_the_page(dataplane, backends, ca):
    web = backends("web")
    port = free_port()
    result = dataplane.apply(
        snapshot(
            [https_listener(port, http2=True, error_pages=PAGES)],
            [server_group((web, 0))],
            certificates=[certificate_entry("cert-default", ca.issue_cert("www.example.com"))],
        )
    )
    assert result["lsn-tls"]["status"] == "running", result

    with H2Client(port, trusting(ca)) as client:
        assert client.alpn == "h2"
        page = client.get("/")
    with H2Client(port, trusting(ca)) as client:
        head = client.wait(client.request("HEAD", "/"))[0]

    assert (page.status, page.body) == (503, PAGE_503.encode())
    assert page.header("content-type") == "text/html; charset=utf-8"
    assert page.header("cache-control") == "no-store"
    assert page.header("content-length") == str(len(PAGE_503))
    # HTTP/2 carries no connection-specific fields (RFC 9113 8.2.2).
    assert page.header("connection") is None
    assert (head.status, head.body, head.ended) == (503, b"", True)
    assert web.requests == []


@pytest.mark.asyncio
async def test_an_http3_stream_gets_the_page(quic):  # noqa: F811 (the fixture)
    dead = [Server(f"dead{n}", closed_tcp_port()) for n in range(2)]
    _, port = await quic.listener(quic.settings(*dead, error_pages=PAGES))

    async with quic.client(port) as client:
        status, headers, body = await client.request(b"GET", b"/")

    assert (status, body) == (502, PAGE_502.encode())
    assert headers[b"content-type"] == b"text/html; charset=utf-8"
    assert headers[b"cache-control"] == b"no-store"
    assert b"connection" not in headers


# -- the schema ------------------------------------------------------------------------------------


def refusal(**settings: Any) -> str:
    data = snapshot([listener(8080, **settings)], [group_of(dead_server("a"))])
    with pytest.raises(ConfigError) as refused:
        Snapshot.from_dict(data)
    return str(refused.value)


def test_the_schema_refuses_what_it_cannot_serve():
    too_long = {"status": "503", "content_type": "text/html", "body": "x" * 65_537}
    assert "error_pages[0].body: at most 65536 bytes" in refusal(error_pages=[too_long])
    # A character of several bytes counts as its bytes.
    wide = {"status": "503", "content_type": "text/html", "body": "\N{EM DASH}" * 21_846}
    assert "at most 65536 bytes" in refusal(error_pages=[wide])
    unknown = {"status": "500", "content_type": "text/html", "body": "x"}
    assert "error_pages[0].status" in refusal(error_pages=[unknown])
    xml = {"status": "502", "content_type": "application/xml", "body": "<x/>"}
    assert "error_pages[0].content_type" in refusal(error_pages=[xml])
    twice = [PAGES[0], PAGES[0]]
    assert "error_pages[1].status: a second page for 502" in refusal(error_pages=twice)
    assert "only http, https and quic listeners serve error pages" in refusal(
        protocol="tcp", error_pages=[PAGES[0]]
    )


def test_a_body_of_exactly_the_limit_is_served_whole():
    body = "x" * 65_536
    page = {"status": "502", "content_type": "text/plain", "body": body}
    data = snapshot(
        [listener(8080, error_pages=[page])],
        [group_of(dead_server("a"))],
    )
    parsed = Snapshot.from_dict(data)
    compiled = ErrorPages(parsed.listeners[0].error_pages).page(502, maintenance=False)
    assert compiled is not None
    head, answer = compiled.response(b"Thu, 03 Dec 2026 07:00:00 GMT", head_only=False)
    assert head.endswith(b"\r\n\r\n") and answer == body.encode()
    assert b"\r\nContent-Length: 65536\r\n" in head
