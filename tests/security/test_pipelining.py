"""Pipelined bytes after a request that ends the connection (RFC 9112 9.3 and 9.6).

A request with `Connection: close`, or an HTTP/1.0 request without keep-alive, is the last one
the connection carries: the client gets its response, then the node closes, and whatever the
client wrote after it is ignored, never answered with an error and never forwarded.
"""

from __future__ import annotations

import pytest

from tests.dataplane import conftest as dataplane_fixtures
from tests.dataplane.conftest import split_responses
from tests.security.raw_http import exchange, fds_return, serve, statuses

# The dataplane tests' fixtures: a node and backends on a background loop, a test CA.
loop_thread = dataplane_fixtures.loop_thread
dataplane = dataplane_fixtures.dataplane
backends = dataplane_fixtures.backends

AFTER = b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n"

LAST_REQUESTS = {
    "connection_close": b"GET /c1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    "http10": b"GET /c1 HTTP/1.0\r\n\r\n",
    "http10_with_host": b"GET /c1 HTTP/1.0\r\nHost: t\r\n\r\n",
    "post_with_body_and_close": (
        b"POST /c1 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
    ),
}
TRAILING = {
    "pipelined_request": AFTER,
    "garbage": b"\x00\x01 not http at all\r\n\r\n",
    "half_a_request": b"GET /after HT",
}


@pytest.mark.parametrize("last", LAST_REQUESTS.values(), ids=LAST_REQUESTS.keys())
@pytest.mark.parametrize("trailing", TRAILING.values(), ids=TRAILING.keys())
def test_bytes_after_the_last_request_are_ignored(dataplane, backends, last, trailing):
    web = backends("web")
    port = serve(dataplane, web)
    with fds_return():
        answer, closed = exchange(port, last + trailing, half_close=False)
        assert closed, "the node kept the connection open after its last request"
        assert split_responses(answer) == [(200, b"web")]
        assert [r.target for r in web.requests] == ["/c1"]


def test_keep_alive_pipelined_requests_are_all_answered_in_order(dataplane, backends):
    web = backends("web")
    port = serve(dataplane, web)
    data = b"".join(
        b"GET /p%d HTTP/1.1\r\nHost: t\r\n%s\r\n" % (n, b"Connection: close\r\n" if n == 2 else b"")
        for n in range(3)
    )
    with fds_return():
        answer, closed = exchange(port, data + AFTER, half_close=False)
        assert closed
        assert statuses(answer) == [200, 200, 200]
        assert split_responses(answer) == [(200, b"web")] * 3
        assert [r.target for r in web.requests] == ["/p0", "/p1", "/p2"]
