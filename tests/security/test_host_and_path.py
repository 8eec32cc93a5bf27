"""Host and path as forwarding rules see them: a request may not carry two hosts, hide its host
in the request target, use a version the node does not speak, or disguise a path, to get past
a rule that the backend would then see through.

Each HTTP/1.1 input is exact bytes over a real socket; the listener's rules answer host
`admin.example` and path `/admin` with a fixed 403, and the test asserts both the status and
what the recording backend received. The same rules are checked over HTTP/2.
"""

from __future__ import annotations

import pytest
from aioquic.h3.connection import ErrorCode

from dataplane.rules import matching_path, normalize_path
from tests.dataplane import conftest as dataplane_fixtures
from tests.dataplane.conftest import certificate_entry, server_group, snapshot
from tests.dataplane.h2client import H2Client
from tests.dataplane.test_https import https_listener, trusting
from tests.dataplane.test_quic import SERVER_NAME, ConnectionClosed, StreamReset
from tests.fixtures.ports import free_port
from tests.security import raw_http
from tests.security.raw_http import (
    ADMIN_DENIED,
    ADMIN_PATH_DENIED,
    exchange,
    fds_return,
    serve,
    statuses,
)

# The dataplane tests' fixtures: a node and backends on a background loop, a test CA.
loop_thread = dataplane_fixtures.loop_thread
dataplane = dataplane_fixtures.dataplane
backends = dataplane_fixtures.backends
ca = dataplane_fixtures.ca
quic = raw_http.quic

RULES = [ADMIN_DENIED, ADMIN_PATH_DENIED]


@pytest.fixture
def guarded(dataplane, backends):
    """A listener whose rules deny host admin.example and path /admin; X-Forwarded-Host on."""
    web = backends("web")
    port = serve(dataplane, web, rules=RULES, x_forwarded_host=True)
    return port, web


def ask(port: int, data: bytes) -> int:
    answer, closed = exchange(port, data)
    assert closed
    found = statuses(answer)
    assert found, answer
    return found[0]


# -- two hosts (RFC 9112 3.2: 400 for more than one Host field) ------------------------------------

TWO_HOSTS = {
    "denied_first": b"Host: admin.example\r\nHost: t\r\n",
    "denied_last": b"Host: t\r\nHost: admin.example\r\n",
    "same_twice": b"Host: t\r\nHost: t\r\n",
    "other_case_name": b"Host: t\r\nHOST: admin.example\r\n",
    "empty_and_denied": b"Host:\r\nHost: admin.example\r\n",
}


@pytest.mark.parametrize("hosts", TWO_HOSTS.values(), ids=TWO_HOSTS.keys())
def test_two_host_fields_are_refused(guarded, hosts):
    port, web = guarded
    with fds_return():
        assert ask(port, b"GET /r HTTP/1.1\r\n" + hosts + b"\r\n") == 400
    assert web.requests == []


# -- one host, disguised -------------------------------------------------------------------------

DISGUISED_HOSTS = ["ADMIN.EXAMPLE", "admin.example.", "admin.example:80", "Admin.Example.:8080"]


@pytest.mark.parametrize("host", DISGUISED_HOSTS)
def test_a_disguised_host_still_meets_its_rule(guarded, host):
    port, web = guarded
    assert ask(port, b"GET /r HTTP/1.1\r\nHost: %s\r\n\r\n" % host.encode()) == 403
    assert web.requests == []


INVALID_HOSTS = [
    "admin.example t",
    "t@admin.example",
    "admin.example/x",
    "admin.example:8o",
    "admin.example:80:80",
    "adm%69n.example",
    "[::1",
    "admin.example,t",
]


@pytest.mark.parametrize("host", INVALID_HOSTS)
def test_a_host_that_is_not_a_host_is_refused(guarded, host):
    port, web = guarded
    assert ask(port, b"GET /r HTTP/1.1\r\nHost: %s\r\n\r\n" % host.encode()) == 400
    assert web.requests == []


def test_an_ipv6_host_with_a_port_is_accepted(guarded):
    port, web = guarded
    assert ask(port, b"GET /r HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n") == 200
    assert web.requests[0].all("Host") == ["[::1]:8080"]


# -- absolute-form targets (RFC 9112 3.2.2: the authority is the host) -----------------------------

ABSOLUTE_DENIED = [
    b"http://admin.example/r",
    b"HTTP://ADMIN.EXAMPLE/r",
    b"http://admin.example:80/r",
    b"https://admin.example/r",
    b"http://admin.example",
    b"http://admin.example?x=1",
]


@pytest.mark.parametrize("target", ABSOLUTE_DENIED)
def test_absolute_form_authority_is_the_host_rules_see(guarded, target):
    port, web = guarded
    assert ask(port, b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % target) == 403
    assert web.requests == []


@pytest.mark.parametrize(
    ("target", "forwarded", "host"),
    [
        (b"http://other.example/r?q=1", "/r?q=1", "other.example"),
        (b"http://Other.Example:8080/a/b", "/a/b", "Other.Example:8080"),
        (b"http://other.example", "/", "other.example"),
        (b"http://other.example?x=1", "/?x=1", "other.example"),
    ],
)
def test_absolute_form_is_forwarded_in_origin_form_with_its_host(guarded, target, forwarded, host):
    port, web = guarded
    assert ask(port, b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % target) == 200
    [received] = web.requests
    assert received.target == forwarded
    assert received.all("Host") == [host]
    assert received.all("X-Forwarded-Host") == [host]


@pytest.mark.parametrize(
    "target",
    [
        b"http://user@admin.example/r",
        b"http://t@admin.example/r",
        b"http:///r",
        b"ftp://admin.example/r",
        b"http://admin.example t/r",
        b"http://[::1/r",
    ],
)
def test_an_absolute_form_the_node_cannot_trust_is_refused(guarded, target):
    port, web = guarded
    assert ask(port, b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % target) == 400
    assert web.requests == []


# -- versions and the Host a version requires ----------------------------------------------------


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/0.9"])
def test_a_version_other_than_http1_is_not_supported(guarded, version):
    port, web = guarded
    assert ask(port, b"GET /x %s\r\nHost: t\r\n\r\n" % version) == 505
    assert web.requests == []


def test_http11_without_host_is_refused(guarded):
    port, web = guarded
    assert ask(port, b"GET /x HTTP/1.1\r\n\r\n") == 400
    assert web.requests == []


def test_http10_without_host_reaches_the_backend_as_valid_http11(guarded):
    port, web = guarded
    assert ask(port, b"GET /x HTTP/1.0\r\n\r\n") == 200
    [received] = web.requests
    assert received.version == "HTTP/1.1"
    # RFC 9112 3.2: a request without an authority carries an empty Host.
    assert received.all("Host") == [""]
    assert received.all("X-Forwarded-Host") == []


def test_connection_cannot_remove_the_host_rules_saw(guarded):
    port, web = guarded
    assert ask(port, b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: host\r\n\r\n") == 200
    assert web.requests[0].all("Host") == ["t"]


# -- paths (rules match the normalized path) -----------------------------------------------------

DISGUISED_PATHS = [
    b"/admin",
    b"//admin",
    b"///admin/x",
    b"/./admin",
    b"/x/../admin",
    b"/x/y/../../admin",
    b"/../admin",
    b"/%2e/admin",
    b"/x/%2E%2E/admin",
    b"/%61dmin",
    b"/%2561dmin",
    b"/x/..;/admin",
    b"/x;p=1/..;/admin;jsessionid=1",
    b"/admin/.",
    b"/.//admin?x=1",
]


@pytest.mark.parametrize("path", DISGUISED_PATHS)
def test_a_disguised_path_still_meets_its_rule(guarded, path):
    port, web = guarded
    with fds_return():
        assert ask(port, b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path) == 403
    assert web.requests == []


@pytest.mark.parametrize(
    ("path", "forwarded"),
    [
        (b"/public/a", "/public/a"),
        (b"//public/./a/../b?q=/../admin", "/public/b?q=/../admin"),
        (b"/public/%7Euser/%41", "/public/~user/A"),
        (b"/public/a%3Fb/%25", "/public/a%3Fb/%25"),
        (b"/x/..;/public", "/x/..;/public"),
        (b"/public/a/..", "/public/"),
    ],
)
def test_with_path_rules_the_backend_gets_the_path_the_rules_judged(guarded, path, forwarded):
    port, web = guarded
    assert ask(port, b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path) == 200
    assert [r.target for r in web.requests] == [forwarded]


@pytest.mark.parametrize(
    "path",
    [b"/x/..%2Fadmin", b"/x%2F..%2Fadmin", b"/public/..%2fsecret", b"/a%5C..%5Cadmin", b"/a\\b"],
)
def test_with_path_rules_a_path_backends_split_differently_is_refused(guarded, path):
    port, web = guarded
    assert ask(port, b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path) == 400
    assert web.requests == []


def test_without_path_rules_the_path_is_forwarded_as_received(dataplane, backends):
    web = backends("web")
    port = serve(dataplane, web, rules=[ADMIN_DENIED])
    for path in (b"//a/./b/../%7Ec", b"/x/..%2Fadmin", b"/a\\b"):
        assert ask(port, b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path) == 200
    assert [r.target for r in web.requests] == ["//a/./b/../%7Ec", "/x/..%2Fadmin", "/a\\b"]


@pytest.mark.parametrize(
    ("path", "forwarded", "matched"),
    [
        (b"/a/b", b"/a/b", b"/a/b"),
        (b"//a/./b/../c/", b"/a/c/", b"/a/c/"),
        (b"/%7E%41%2e/", b"/~A./", b"/~A./"),
        (b"/a/%2e%2E/b", b"/b", b"/b"),
        (b"/%2561dmin", b"/%2561dmin", b"/admin"),
        (b"/a%3Fb", b"/a%3Fb", b"/a?b"),
        (b"/x/..;/admin", b"/x/..;/admin", b"/admin"),
        (b"/..", b"/", b"/"),
        (b"*", b"*", b"*"),
    ],
)
def test_forwarded_and_matching_forms_of_a_path(path, forwarded, matched):
    assert normalize_path(path) == forwarded
    assert matching_path(path) == matched


# -- the same over HTTP/2 --------------------------------------------------------------------------


@pytest.fixture
def guarded_h2(dataplane, backends, ca):
    web = backends("web")
    port = free_port()
    result = dataplane.apply(
        snapshot(
            [https_listener(port, http2=True, forwarding_rules=RULES, x_forwarded_host=True)],
            [server_group(web)],
            certificates=[certificate_entry("cert-default", ca.issue_cert("www.example.com"))],
        )
    )
    assert result["lsn-tls"]["status"] == "running", result
    client = H2Client(port, trusting(ca))
    # The attacks are fields a careful client library would refuse to send.
    client.conn.config.validate_outbound_headers = False
    client.conn.config.normalize_outbound_headers = False
    yield client, web
    client.close()


def h2_status(client: H2Client, path: str, authority: str, **kwargs) -> int | None:
    """The response's status; None when the node reset the stream or ended the connection."""
    try:
        response = client.get(path, authority=authority, **kwargs)
    except ConnectionError:
        assert client.goaway is not None
        return None
    return None if response.reset is not None else response.status


@pytest.mark.parametrize(
    ("path", "authority", "headers"),
    [
        ("/r", "admin.example", []),
        ("/r", "ADMIN.example.", []),
        ("/r", "admin.example:443", []),
        ("//admin", "t", []),
        ("/x/../admin", "t", []),
        ("/%2e/admin", "t", []),
    ],
)
def test_h2_rules_see_through_the_same_disguises(guarded_h2, path, authority, headers):
    client, web = guarded_h2
    assert h2_status(client, path, authority, headers=headers) == 403
    assert web.requests == []


@pytest.mark.parametrize(
    "headers",
    [
        [("host", "admin.example")],
        [("host", "t"), ("host", "admin.example")],
    ],
)
def test_h2_a_host_field_that_differs_from_authority_is_refused(guarded_h2, headers):
    client, web = guarded_h2
    # RFC 9113 8.3.1 makes it malformed; h2 ends the connection with a PROTOCOL_ERROR GOAWAY.
    assert h2_status(client, "/r", "t", headers=headers) is None
    assert web.requests == []


def test_h2_a_host_field_equal_to_authority_is_one_host(guarded_h2):
    client, web = guarded_h2
    assert h2_status(client, "/r", "t", headers=[("host", "t")]) == 200
    assert web.requests[0].all("Host") == ["t"]


@pytest.mark.parametrize(
    ("path", "authority"),
    [("http://admin.example/r", "t"), ("/r", "user@admin.example"), ("r", "t")],
)
def test_h2_a_target_or_authority_http2_forbids_is_refused(guarded_h2, path, authority):
    client, web = guarded_h2
    # RFC 9113 8.3.1: origin-form :path, no userinfo in :authority; malformed either way.
    assert h2_status(client, path, authority) in (None, 400)
    assert web.requests == []


def test_h2_forwarded_path_is_normalized_like_http1(guarded_h2):
    client, web = guarded_h2
    assert h2_status(client, "//public/./a/../b?q=/../admin", "t") == 200
    assert [r.target for r in web.requests] == ["/public/b?q=/../admin"]


# -- the same over HTTP/3 -------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("path", "headers"),
    [
        (b"/r", [(b"host", b"admin.example")]),
        (b"/r", [(b"host", SERVER_NAME.encode()), (b"host", b"admin.example")]),
        (b"http://admin.example/r", []),
        (b"r", []),
    ],
)
async def test_http3_a_second_host_or_a_non_origin_target_is_refused(quic, path, headers):
    backend = await quic.backend("web")
    _, port = await quic.listener(quic.settings(backend))
    async with quic.client(port) as client:
        # RFC 9114 4.1.2: malformed, a stream error of type H3_MESSAGE_ERROR.
        with pytest.raises(StreamReset) as reset:
            await client.request(b"GET", path, headers)
    assert reset.value.code == ErrorCode.H3_MESSAGE_ERROR
    assert backend.requests == []


@pytest.mark.asyncio
async def test_http3_a_host_equal_to_authority_is_one_host(quic):
    backend = await quic.backend("web")
    _, port = await quic.listener(quic.settings(backend))
    async with quic.client(port) as client:
        status, _, _ = await client.request(
            b"GET", b"/r", [(b"host", SERVER_NAME.upper().encode())]
        )
    assert status == 200
    assert backend.requests[0].all("Host") == [SERVER_NAME]


@pytest.mark.asyncio
@pytest.mark.parametrize("name", [b"Host", b"X-Forwarded-For", b"Content-Length"])
async def test_http3_an_uppercase_field_name_is_refused(quic, name):
    # RFC 9114 4.2: malformed; aioquic closes the connection with H3_MESSAGE_ERROR. The exchange
    # takes an HTTP/3 name as its own lower case, so an uppercase "Host" must never reach it as a
    # plain field beside :authority.
    backend = await quic.backend("web")
    _, port = await quic.listener(quic.settings(backend))
    async with quic.client(port) as client:
        with pytest.raises(ConnectionClosed) as closed:
            await client.request(b"GET", b"/r", [(name, b"0")])
    assert closed.value.code == ErrorCode.H3_MESSAGE_ERROR
    assert backend.requests == []


# -- header names that CGI-style backends read as a managed header --------------------------------

DISGUISED_NAMES = [
    b"X_Forwarded_For: 203.0.113.66",
    b"X_FORWARDED_PROTO: http",
    b"Content_Length: 40",
    b"Transfer_Encoding: chunked",
    b"X_Forwarded_Host: admin.example",
]


def test_a_managed_header_disguised_with_underscores_is_dropped(dataplane, backends):
    web = backends("web")
    port = serve(dataplane, web, x_forwarded_proto=True, x_forwarded_host=True)
    fields = b"".join(name + b"\r\n" for name in DISGUISED_NAMES)
    request = b"GET /r HTTP/1.1\r\nHost: t\r\n" + fields + b"X_Custom: kept\r\n\r\n"
    assert ask(port, request) == 200
    [received] = web.requests
    names = {name.lower() for name in received.names()}
    assert not {n.split(b":")[0].decode().lower() for n in DISGUISED_NAMES} & names
    assert received.all("X_Custom") == ["kept"]
    assert received.all("X-Forwarded-For") == ["127.0.0.1"]
    assert received.all("X-Forwarded-Proto") == ["http"]


@pytest.mark.asyncio
async def test_http3_a_managed_header_disguised_with_underscores_is_dropped(quic):
    backend = await quic.backend("web")
    _, port = await quic.listener(quic.settings(backend))
    async with quic.client(port) as client:
        status, _, _ = await client.request(
            b"GET", b"/r", [(b"x_forwarded_for", b"203.0.113.66"), (b"x_custom", b"kept")]
        )
    assert status == 200
    [received] = backend.requests
    assert received.all("x_forwarded_for") == []
    assert received.all("X-Forwarded-For") == ["127.0.0.1"]
    assert received.all("x_custom") == ["kept"]
