"""HTTP listeners: balancing, headers, persistence, health, timeouts and HTTP correctness."""

from __future__ import annotations

import asyncio
import collections
import http.client
import socket
import threading
import time

import pytest

from tests.dataplane.conftest import (
    WAIT,
    Reply,
    get,
    listener,
    raw_exchange,
    read_until_closed,
    server_group,
    snapshot,
    split_responses,
    wait_until,
)
from tests.fixtures.ports import free_port
from tests.fixtures.resources import open_fds, rss_kib


def serve(dataplane, groups, **settings):
    port = free_port()
    result = dataplane.apply(snapshot([listener(port, **settings)], groups))
    assert result["lsn-web"]["status"] == "running", result
    return port


def keep_alive(port: int) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)


def fetch(connection: http.client.HTTPConnection, path: str = "/", **kwargs) -> tuple[int, bytes]:
    connection.request("GET", path, **kwargs)
    response = connection.getresponse()
    return response.status, response.read()


# -- balancing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", ["weighted_round_robin", "weighted_least_connections"])
def test_weights_3_to_1_split_traffic_75_25(dataplane, backends, scheduler):
    heavy, light = backends("heavy"), backends("light")
    port = serve(dataplane, [server_group((heavy, 75), (light, 25))], scheduler=scheduler)
    connection = keep_alive(port)
    counts = collections.Counter(fetch(connection)[1] for _ in range(400))
    connection.close()
    assert 0.73 <= counts[b"heavy"] / 400 <= 0.77
    assert counts[b"heavy"] + counts[b"light"] == 400


def test_weight_zero_server_receives_nothing(dataplane, backends):
    active, drained = backends("active"), backends("drained")
    port = serve(dataplane, [server_group(active, (drained, 0))])
    connection = keep_alive(port)
    assert {fetch(connection)[1] for _ in range(20)} == {b"active"}
    connection.close()
    assert drained.requests == []


def test_round_robin_alternates(dataplane, backends):
    a, b = backends("a"), backends("b")
    port = serve(dataplane, [server_group((a, 90), (b, 10))], scheduler="round_robin")
    assert [get(port)[2] for _ in range(4)] == [b"a", b"b", b"a", b"b"]


def test_keep_alive_reuses_one_backend_connection(dataplane, backends):
    web = backends("web")
    port = serve(dataplane, [server_group(web)])
    connection = keep_alive(port)
    for _ in range(20):
        assert fetch(connection) == (200, b"web")
    connection.close()
    assert len(web.requests) == 20
    assert web.connections == 1


def test_failed_connect_is_retried_once_on_another_server(dataplane, backends):
    alive, dead = backends("alive"), backends("dead")
    port = serve(dataplane, [server_group(dead, alive)])
    dataplane.loop_thread.run(dead.stop())
    assert [get(port)[:3:2] for _ in range(6)] == [(200, b"alive")] * 6


def test_all_servers_failing_gives_502(dataplane, backends):
    first, second = backends("first"), backends("second")
    port = serve(dataplane, [server_group(first, second)])
    dataplane.loop_thread.run(first.stop())
    dataplane.loop_thread.run(second.stop())
    status, headers, _ = get(port)
    assert status == 502
    assert headers["Connection"] == "close"
    assert dataplane.stats("lsn-web")["responses"]["5xx"] == 1


def test_no_eligible_server_gives_503(dataplane, backends):
    idle = backends("idle")
    port = serve(dataplane, [server_group((idle, 0))])
    assert get(port)[0] == 503
    assert idle.requests == []


def test_killed_backend_is_marked_down_and_avoided(dataplane, backends):
    healthy, doomed = backends("healthy"), backends("doomed")
    check = {
        "enabled": True,
        "protocol": "http",
        "path": "/",
        "interval": 1,
        "timeout": 1,
        "healthy_threshold": 1,
        "unhealthy_threshold": 2,
        "expected_codes": ["http_2xx"],
    }
    port = serve(dataplane, [server_group(healthy, doomed, health_check=check)])
    dataplane.loop_thread.run(doomed.stop())
    killed_at = time.monotonic()

    def doomed_is_down() -> bool:
        backends_status = dataplane.status()["listeners"]["lsn-web"]["backends"]
        return not next(b for b in backends_status if b["port"] == doomed.port)["healthy"]

    # interval x unhealthy threshold, plus one interval of start-up jitter and a margin.
    assert wait_until(doomed_is_down, timeout=1 * 2 + 1 + 2)
    assert time.monotonic() - killed_at < 5
    reason = next(
        b
        for b in dataplane.status()["listeners"]["lsn-web"]["backends"]
        if b["port"] == doomed.port
    )["reason"]
    assert reason == "connection refused"
    before = dataplane.stats("lsn-web")["responses"]["5xx"]
    assert {get(port)[2] for _ in range(10)} == {b"healthy"}
    assert dataplane.stats("lsn-web")["responses"]["5xx"] == before


# -- X-Forwarded-For (seed 001 table) and other headers --------------------------------------------

XFF_CASES = [
    # mode, header sent by the client, header the backend receives
    ("add", None, ["127.0.0.1"]),
    ("add", "127.0.0.2", ["127.0.0.2, 127.0.0.1"]),
    ("add", "127.0.0.2, 127.0.0.3", ["127.0.0.2, 127.0.0.3, 127.0.0.1"]),
    ("remove", None, []),
    ("remove", "127.0.0.2", []),
    ("remove", "127.0.0.2, 127.0.0.3", []),
    ("off", None, []),
    ("off", "127.0.0.2", ["127.0.0.2"]),
    ("off", "127.0.0.2, 127.0.0.3", ["127.0.0.2, 127.0.0.3"]),
]


@pytest.mark.parametrize(("mode", "sent", "received"), XFF_CASES)
def test_x_forwarded_for_follows_the_seed_table(dataplane, backends, mode, sent, received):
    web = backends("web")
    port = serve(dataplane, [server_group(web)], x_forwarded_for=mode)
    get(port, "/index.html", headers={"X-Forwarded-For": sent} if sent else {})
    assert web.requests[0].all("X-Forwarded-For") == received


def test_custom_headers_are_added_and_cannot_be_forged(dataplane, backends):
    web = backends("web")
    port = serve(
        dataplane,
        [server_group(web)],
        x_forwarded_proto=True,
        x_forwarded_port=True,
        x_forwarded_host=True,
        x_forwarded_client_srcport=True,
        slb_id=True,
        slb_ip=True,
    )
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        client_port = sock.getsockname()[1]
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: shop.example.com\r\nX-Forwarded-Proto: https\r\n"
            b"SLB-ID: lb-forged\r\nConnection: close\r\n\r\n"
        )
        while sock.recv(65536):
            pass
    received = web.requests[0]
    assert received.all("X-Forwarded-Proto") == ["http"]
    assert received.all("X-Forwarded-Port") == [str(port)]
    assert received.all("X-Forwarded-Host") == ["shop.example.com"]
    assert received.all("X-Forwarded-Client-srcport") == [str(client_port)]
    assert received.all("SLB-ID") == ["lb-test0001"]
    assert received.all("SLB-IP") == ["127.0.0.1"]
    assert received.header("Host") == "shop.example.com"


def test_headers_are_passed_through_when_not_managed(dataplane, backends):
    web = backends("web")
    port = serve(dataplane, [server_group(web)])
    get(port, headers={"X-Forwarded-Proto": "https", "X-Request-Id": "abc"})
    assert web.requests[0].header("X-Forwarded-Proto") == "https"
    assert web.requests[0].header("X-Request-Id") == "abc"


def test_hop_by_hop_headers_are_removed_both_ways(dataplane, backends):
    def reply(_request):
        return Reply(
            body=b"ok",
            headers=[("Keep-Alive", "timeout=5"), ("X-App", "1"), ("Upgrade", "h2c")],
        )

    web = backends("web", reply)
    port = serve(dataplane, [server_group(web)])
    response = raw_exchange(
        port,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\n"
        b"Keep-Alive: 300\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X\r\n"
        b"Upgrade: websocket\r\nX-Kept: yes\r\n\r\n",
    )
    names = {name.lower() for name in web.requests[0].names()}
    assert names.isdisjoint(
        {"connection", "x-secret", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"}
    )
    assert web.requests[0].header("X-Kept") == "yes"
    head = response.split(b"\r\n\r\n", 1)[0].lower()
    assert b"keep-alive:" not in head
    assert b"upgrade:" not in head
    assert b"x-app: 1" in head


def test_connection_options_count_in_any_case_and_over_repeated_fields(dataplane, backends):
    web = backends("web")
    port = serve(dataplane, [server_group(web)])
    # A second Connection field names a header too; "CLOSE" in capitals still ends the
    # connection once the response is sent (raw_exchange reads until the node closes).
    response = raw_exchange(
        port,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: CLOSE\r\nConnection: X-Secret\r\n"
        b"X-Secret: 1\r\nX-Kept: yes\r\n\r\n",
    )
    assert response.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nconnection: close\r\n" in response.split(b"\r\n\r\n", 1)[0].lower() + b"\r\n"
    recorded = web.requests[0]
    assert recorded.header("X-Secret") is None
    assert recorded.header("X-Kept") == "yes"


def test_retrieve_client_ip_feeds_source_ip_hash(dataplane, backends):
    a, b, c = backends("a"), backends("b"), backends("c")
    trusted = {"enabled": True, "trusted": ["0.0.0.0/0"]}
    port = serve(
        dataplane, [server_group(a, b, c)], scheduler="source_ip_hash", retrieve_client_ip=trusted
    )
    connection = keep_alive(port)
    chosen = {}
    for n in range(30):
        client = f"198.51.100.{n}"
        answers = {
            fetch(connection, headers={"X-Forwarded-For": f"{client}, 10.0.0.1"})[1]
            for _ in range(3)
        }
        assert len(answers) == 1  # one client, one server
        chosen[client] = answers.pop()
    connection.close()
    # Every request came from 127.0.0.1; only the X-Forwarded-For client can spread them.
    assert len(set(chosen.values())) > 1


def test_without_retrieve_client_ip_the_peer_is_the_client(dataplane, backends):
    a, b, c = backends("a"), backends("b"), backends("c")
    port = serve(dataplane, [server_group(a, b, c)], scheduler="source_ip_hash")
    connection = keep_alive(port)
    answers = {
        fetch(connection, headers={"X-Forwarded-For": f"198.51.100.{n}"})[1] for n in range(30)
    }
    connection.close()
    assert len(answers) == 1


# -- session persistence ---------------------------------------------------------------------------


def test_insert_cookie_keeps_a_client_on_its_server(dataplane, backends):
    a, b = backends("a"), backends("b")
    persistence = {"mode": "insert_cookie", "cookie_timeout": 600}
    port = serve(dataplane, [server_group(a, b)], persistence=persistence)
    _, headers, first = get(port)
    cookie = headers["Set-Cookie"]
    assert cookie.startswith("SERVERID=")
    assert "Max-Age=600" in cookie
    server_id = cookie.split(";")[0]
    answers = {get(port, headers={"Cookie": f"{server_id}; theme=dark"})[2] for _ in range(6)}
    assert answers == {first}
    # The load balancer's cookie is its own: the application only sees its cookies.
    assert (a.requests + b.requests)[-1].header("Cookie") == "theme=dark"


def test_rewrite_cookie_follows_the_application_cookie(dataplane, backends):
    def reply(request):
        return Reply(body=b"app", headers=[("Set-Cookie", "session=s3cr3t; Path=/")])

    a, b = backends("a", reply), backends("b", reply)
    persistence = {"mode": "rewrite_cookie", "cookie_name": "session"}
    port = serve(dataplane, [server_group(a, b)], persistence=persistence)
    _, headers, _ = get(port)
    first = a if a.requests else b
    rewritten = headers["Set-Cookie"].split(";")[0]
    assert rewritten.startswith("session=") and rewritten.endswith("~s3cr3t")
    for _ in range(5):
        get(port, headers={"Cookie": rewritten})
    assert len(first.requests) == 6
    assert first.requests[-1].header("Cookie") == "session=s3cr3t"


# -- access control --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "entries", "allowed"),
    [
        ("blacklist", ["127.0.0.0/8"], False),
        ("blacklist", ["10.0.0.0/8", "2001:db8::/32"], True),
        ("whitelist", ["10.0.0.0/8"], False),
        ("whitelist", ["127.0.0.1", "::1"], True),
        ("whitelist", [], True),  # seed 000: an empty list forwards everything
        ("blacklist", [], True),
    ],
)
def test_access_control_lists(dataplane, backends, mode, entries, allowed):
    web = backends("web")
    port = free_port()
    dataplane.apply(
        snapshot(
            [listener(port, acl={"mode": mode, "acl_id": "acl-list0001"})],
            [server_group(web)],
            acls=[{"id": "acl-list0001", "entries": entries}],
        )
    )
    if allowed:
        assert get(port)[0] == 200
    else:
        with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
            get(port)
        assert web.requests == []
        assert dataplane.stats("lsn-web")["denied_connections"] == 1


# -- timeouts --------------------------------------------------------------------------------------


def test_slow_backend_gives_504_after_the_response_timeout(dataplane, backends):
    slow = backends("slow", lambda request: Reply(body=b"late", delay=3))
    port = serve(dataplane, [server_group(slow)], response_timeout=1, request_timeout=30)
    status, _, body = get(port)
    assert status == 504
    assert body == b"504 Gateway Timeout\n"


def test_incomplete_request_head_gets_408_after_the_request_timeout(dataplane, backends):
    """Seed 002's request timeout: the client has this long to send its request head."""
    web = backends("web")
    port = serve(dataplane, [server_group(web)], request_timeout=1, idle_timeout=30)
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        # Keep-alive idle time does not count; a started head does.
        time.sleep(1.3)
        sock.sendall(b"GET /slowly HTTP/1.1\r\nHost: a\r\n")
        reply = sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert b"Connection: close" in reply
    assert [r.target for r in web.requests] == ["/"]


def test_idle_client_connection_is_closed(dataplane, backends):
    web = backends("web")
    port = serve(dataplane, [server_group(web)], idle_timeout=1)
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert sock.recv(65536) == b""  # closed by the dataplane, not by us
        assert time.monotonic() - started >= 0.9


# -- HTTP correctness ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5x\r\n\r\nhello", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\n"
            + b"".join(b"X-H%d: %s\r\n" % (n, b"v" * 200) for n in range(400))
            + b"\r\n",
            431,
        ),
        # RFC 9112 6.3: chunked not last leaves the length unknown (400); a coding before chunked
        # that the node does not decode is 501.
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"GARBAGE\r\n\r\n", 400),
    ],
)
def test_malformed_requests_are_refused_and_never_forwarded(
    dataplane, backends, request_bytes, status
):
    web = backends("web")
    port = serve(dataplane, [server_group(web)])
    response = raw_exchange(port, request_bytes)
    assert response.startswith(b"HTTP/1.1 %d " % status)
    assert b"Connection: close" in response
    assert web.requests == []


def test_oversized_header_block_sent_slowly_gets_431(dataplane, backends):
    web = backends("web")
    port = serve(dataplane, [server_group(web)])
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ")
        response = b""
        try:
            for _ in range(100):
                sock.sendall(b"a" * 1024)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while chunk := sock.recv(65536):
                response += chunk
        except ConnectionResetError:
            pass
    assert response.startswith(b"HTTP/1.1 431 ")
    assert web.requests == []


def test_chunked_request_body_is_streamed_to_the_backend(dataplane, backends):
    web = backends("web", lambda request: Reply(body=b"got %d" % len(request.body)))
    port = serve(dataplane, [server_group(web)])
    response = raw_exchange(
        port,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    assert response.startswith(b"HTTP/1.1 200")
    assert response.endswith(b"got 11")
    assert web.requests[0].body == b"hello world"
    assert web.requests[0].header("Transfer-Encoding") == "chunked"


def test_chunked_response_is_passed_to_http_1_1_and_1_0_clients(dataplane, backends):
    body = b"0123456789" * 100
    web = backends("web", lambda request: Reply(body=body, chunked=True))
    port = serve(dataplane, [server_group(web)])
    status, headers, received = get(port)
    assert (status, received) == (200, body)
    assert headers["Transfer-Encoding"] == "chunked"

    old = raw_exchange(port, b"GET / HTTP/1.0\r\nHost: a\r\n\r\n")
    head, _, content = old.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert b"Connection: close" in head
    assert content == body


def _dechunk(data: bytes) -> tuple[bytes, bytes]:
    """A chunked body at the start of `data`, and what follows it."""
    body = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert data.startswith(b"\r\n")
            return body, data[2:]
        body += data[:size]
        assert data[size : size + 2] == b"\r\n"
        data = data[size + 2 :]


def _send_slowly(port: int, data: bytes) -> bytes:
    """One byte per write, so the request line reaches the node over many reads."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for index in range(len(data)):
            sock.sendall(data[index : index + 1])
            time.sleep(0.002)
        return read_until_closed(sock)


@pytest.mark.parametrize(
    ("how", "request_bytes", "chunked"),
    [
        ("one read", b"GET /a HTTP/1.0\r\nHost: a\r\n\r\n", [False]),
        ("one read", b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", [True]),
        ("one read", b"\r\n\r\nGET /a HTTP/1.0\r\nHost: a\r\n\r\n", [False]),
        ("one read", b"GET /a?q=HTTP/1.1 HTTP/1.0\r\nHost: a\r\n\r\n", [False]),
        (
            "one read",
            b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.0\r\nHost: a\r\n\r\n",
            [True, False],
        ),
        ("byte by byte", b"GET /a HTTP/1.0\r\nHost: a\r\n\r\n", [False]),
        ("byte by byte", b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", [True]),
    ],
)
def test_the_version_of_a_request_ending_its_connection_however_its_line_arrives(
    dataplane, backends, how, request_bytes, chunked
):
    """The version of a request that ends its connection is read off the connection's first read
    when that read begins with the request line (protocols.http._line_version), and asked of
    httptools otherwise: either way an HTTP/1.0 client gets a close-delimited body and an HTTP/1.1
    client a chunked one."""
    body = b"0123456789" * 50
    web = backends("web", lambda request: Reply(body=body, chunked=True))
    port = serve(dataplane, [server_group(web)])
    if how == "one read":
        response = raw_exchange(port, request_bytes)
    else:
        response = _send_slowly(port, request_bytes)
    for expected in chunked:
        head, _, response = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        if expected:
            assert b"transfer-encoding: chunked" in head.lower()
            received, response = _dechunk(response)
            assert received == body
        else:
            assert b"transfer-encoding" not in head.lower()
            assert response == body
    assert len(web.requests) == len(chunked)


def test_abandoned_connections_with_a_partial_first_read_leave_nothing_behind(dataplane, backends):
    """Each connection's first read is held until its first head is complete (the request line's
    version is read off it): 300 clients that send part of a request (a long line, a line and
    some headers, a line split mid-version) and go leave no descriptor and little memory; the
    listener still answers."""
    web = backends("web")
    port = serve(dataplane, [server_group(web)])
    partial = [
        b"GET /" + b"a" * 6000,
        b"GET / HTTP/1.0\r\nHost: a\r\nX-Long: " + b"b" * 6000,
        b"GET / HTTP/1.",
    ]
    before, rss_before = open_fds(), rss_kib()
    for _ in range(100):
        sockets = []
        for data in partial:
            sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
            sock.sendall(data)
            sockets.append(sock)
        for sock in sockets:
            sock.close()
    assert wait_until(lambda: open_fds() <= before + 2)
    assert rss_kib() - rss_before < 10_000
    assert raw_exchange(port, b"GET / HTTP/1.0\r\nHost: a\r\n\r\n").startswith(b"HTTP/1.1 200 ")


def test_large_bodies_stream_both_ways(dataplane, backends):
    payload = bytes(range(256)) * 16384  # 4 MiB
    web = backends("web", lambda request: Reply(body=request.body[::-1]))
    port = serve(dataplane, [server_group(web)])
    status, _, received = get(port, method="POST", body=payload)
    assert status == 200
    assert received == payload[::-1]


def test_slow_client_pauses_the_backend(dataplane, backends, loop_thread):
    """Backpressure: a client that does not read holds the backend, not the dataplane's memory."""
    size = 64 * 1024 * 1024
    finished = []

    async def stream(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"x" * 65536
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()
        finished.append(True)

    import asyncio

    server = loop_thread.run(asyncio.start_server(stream, "127.0.0.1", 0))
    backend_port = server.sockets[0].getsockname()[1]
    port = free_port()
    group = {
        "id": "sgp-web",
        "servers": [{"id": "srv-big", "address": "127.0.0.1", "port": backend_port}],
        "health_check": {"enabled": False},
    }
    dataplane.apply(snapshot([listener(port)], [group]))
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        time.sleep(1.0)
        buffered = loop_thread.call(
            lambda: max(
                c.transport.get_write_buffer_size()
                for c in dataplane.node.listeners["lsn-web"].connections
            )
        )
        assert not finished
        assert buffered < 4 * 1024 * 1024
        received = 0
        while received < size:
            chunk = sock.recv(1 << 20)
            assert chunk
            received += len(chunk)
    assert received - size < 200  # the response head
    loop_thread.call(server.close)


def test_expect_100_continue(dataplane, backends):
    web = backends("web", lambda request: Reply(body=request.body))
    port = serve(dataplane, [server_group(web)])
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(
            b"PUT /file HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"data")
        response = sock.recv(65536)
    assert response.startswith(b"HTTP/1.1 200")
    assert response.endswith(b"data")
    assert web.requests[0].header("Expect") is None


def test_pipelined_requests_are_answered_in_order(dataplane, backends):
    web = backends("web", lambda request: Reply(body=request.target.encode()))
    port = serve(dataplane, [server_group(web)])
    response = raw_exchange(
        port,
        b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /three HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    assert [body for _, body in split_responses(response)] == [b"/one", b"/two", b"/three"]


def test_head_request_gets_headers_only(dataplane, backends):
    web = backends("web", lambda request: Reply(body=b"body that HEAD must not see"))
    port = serve(dataplane, [server_group(web)])
    connection = keep_alive(port)
    connection.request("HEAD", "/")
    response = connection.getresponse()
    assert response.status == 200
    assert response.read() == b""
    assert fetch(connection) == (200, b"body that HEAD must not see")
    connection.close()


def test_counters_track_requests_and_status_classes(dataplane, backends):
    def reply(request):
        return Reply(status=404 if request.target == "/missing" else 200, body=b"x")

    web = backends("web", reply)
    port = serve(dataplane, [server_group(web)])
    connection = keep_alive(port)
    for path in ["/", "/", "/missing"]:
        fetch(connection, path)
    connection.close()
    assert wait_until(lambda: dataplane.stats("lsn-web")["active_connections"] == 0)
    counters = dataplane.stats("lsn-web")
    assert counters["requests"] == 3
    assert counters["responses"]["2xx"] == 2
    assert counters["responses"]["4xx"] == 1
    assert counters["total_connections"] == 1
    assert counters["bytes_in"] > 0 and counters["bytes_out"] > 0


@pytest.mark.parametrize(("mode", "allowed"), [("whitelist", True), ("blacklist", False)])
def test_access_control_on_an_ipv6_listener(dataplane, backends, mode, allowed):
    web = backends("web")
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        port = probe.getsockname()[1]
    result = dataplane.apply(
        snapshot(
            [listener(port, acl={"mode": mode, "acl_id": "acl-v6000001"})],
            [server_group(web)],
            acls=[{"id": "acl-v6000001", "entries": ["::1/128", "192.0.2.0/24"]}],
            bind_address="::1",
        )
    )
    assert result["lsn-web"]["status"] == "running"
    connection = http.client.HTTPConnection("::1", port, timeout=WAIT)
    try:
        if allowed:
            assert fetch(connection) == (200, b"web")
            assert web.requests[0].header("X-Forwarded-For") == "::1"
        else:
            with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
                fetch(connection)
            assert web.requests == []
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("trusted", "spread"),
    [
        # Both hops are trusted proxies: the address left of them is the client.
        (["127.0.0.1", "10.0.0.0/8"], True),
        # Only the peer is trusted: 10.0.0.1 is the first untrusted address from the right.
        (["127.0.0.1"], False),
    ],
)
def test_retrieve_client_ip_with_a_trusted_proxy_list(dataplane, backends, trusted, spread):
    a, b, c = backends("a"), backends("b"), backends("c")
    port = serve(
        dataplane,
        [server_group(a, b, c)],
        scheduler="source_ip_hash",
        retrieve_client_ip={"enabled": True, "trusted": trusted},
    )
    connection = keep_alive(port)
    answers = {
        fetch(connection, headers={"X-Forwarded-For": f"198.51.100.{n}, 10.0.0.1"})[1]
        for n in range(30)
    }
    connection.close()
    assert (len(answers) > 1) is spread


def test_slow_backend_pauses_the_uploading_client(dataplane, loop_thread):
    """Backpressure the other way: a backend that does not read holds the client's upload."""
    size = 32 * 1024 * 1024
    release = asyncio.Event()
    received = []

    async def sink(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        await release.wait()
        total = 0
        while total < size:
            chunk = await reader.read(1 << 20)
            if not chunk:
                break
            total += len(chunk)
        received.append(total)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    server = loop_thread.run(asyncio.start_server(sink, "127.0.0.1", 0))
    backend_port = server.sockets[0].getsockname()[1]
    port = free_port()
    group = {
        "id": "sgp-web",
        "servers": [{"id": "srv-sink", "address": "127.0.0.1", "port": backend_port}],
        "health_check": {"enabled": False},
    }
    dataplane.apply(snapshot([listener(port)], [group]))
    sent = [0]

    def upload(sock):
        block = b"u" * 65536
        try:
            while sent[0] < size:
                sock.sendall(block)
                sent[0] += len(block)
        except OSError:
            pass

    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
        uploader = threading.Thread(target=upload, args=(sock,))
        uploader.start()
        time.sleep(1.0)
        buffered = loop_thread.call(
            lambda: max(
                c.upstream.transport.get_write_buffer_size()
                for c in dataplane.node.listeners["lsn-web"].connections
                if c.upstream is not None
            )
        )
        assert sent[0] < size  # the client is held back ...
        assert buffered < 4 * 1024 * 1024  # ... and the dataplane did not buffer the rest
        loop_thread.call(release.set)
        uploader.join(WAIT)
        response = sock.recv(65536)
    assert response.startswith(b"HTTP/1.1 200")
    assert received == [size]
    loop_thread.call(server.close)
