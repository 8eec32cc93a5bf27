"""Session persistence: insert and rewrite cookies, source-IP stickiness with a fake clock."""

import pytest

from dataplane.balancing import Backend
from dataplane.persistence import CookiePersistence, SourceIpPersistence


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def servers():
    return [Backend("srv-a", "10.0.0.1", 8080), Backend("srv-b", "10.0.0.2", 8080)]


@pytest.fixture
def insert():
    return CookiePersistence("insert_cookie", timeout=1200, secret=b"node-secret")


@pytest.fixture
def rewrite():
    return CookiePersistence("rewrite_cookie", cookie_name="JSESSIONID", secret=b"node-secret")


def set_cookie_value(headers, name=b"SERVERID="):
    values = [value for header, value in headers if value.startswith(name)]
    assert [header for header, _ in headers] == [b"Set-Cookie"] * len(headers)
    assert len(values) == 1
    return values[0]


# Insert cookie


def test_insert_adds_serverid_with_timeout_and_keeps_application_cookies(insert, servers):
    headers = insert.response_headers(servers[0], [b"lang=en; Path=/"])

    assert headers[0] == (b"Set-Cookie", b"lang=en; Path=/")
    value = set_cookie_value(headers)
    assert value.startswith(b"SERVERID=" + insert.token(servers[0]).encode() + b";")
    assert b"Max-Age=1200" in value
    assert b"HttpOnly" in value


def test_insert_token_does_not_reveal_the_backend(insert, servers):
    token = insert.token(servers[0])

    assert "10.0.0.1" not in token
    assert "srv-a" not in token
    assert token != insert.token(servers[1])
    # Stable for the same secret (other nodes, restarts); different for another secret.
    assert CookiePersistence("insert_cookie", secret=b"node-secret").token(servers[0]) == token
    assert CookiePersistence("insert_cookie", secret=b"other").token(servers[0]) != token


def test_insert_cookie_sends_the_next_request_to_the_recorded_server(insert, servers):
    by_token = insert.index(servers)
    cookie = b"lang=en; SERVERID=" + insert.token(servers[1]).encode() + b"; theme=dark"

    backend, forwarded = insert.backend_for_request(cookie, by_token)

    assert backend is servers[1]
    # The load balancer's own cookie is not passed on to the application.
    assert forwarded == b"lang=en; theme=dark"


def test_insert_cookie_alone_leaves_an_empty_header(insert, servers):
    cookie = b"SERVERID=" + insert.token(servers[0]).encode()

    assert insert.backend_for_request(cookie, insert.index(servers)) == (servers[0], b"")


@pytest.mark.parametrize(
    "cookie", [None, b"", b"lang=en", b"SERVERID=0123456789abcdef", b"XSERVERID=abc"]
)
def test_requests_without_a_known_cookie_are_not_sticky(insert, servers, cookie):
    backend, _ = insert.backend_for_request(cookie, insert.index(servers))

    assert backend is None


def test_request_without_the_cookie_is_forwarded_unchanged(insert, servers):
    assert insert.backend_for_request(b"lang=en; a=b", insert.index(servers)) == (None, None)


@pytest.mark.parametrize("state", ["unhealthy", "weight 0"])
def test_sticky_server_that_cannot_take_traffic_is_not_used(insert, servers, state):
    if state == "unhealthy":
        servers[1].healthy = False
    else:
        servers[1].weight = 0
    cookie = b"SERVERID=" + insert.token(servers[1]).encode()

    backend, forwarded = insert.backend_for_request(cookie, insert.index(servers))

    assert backend is None
    assert forwarded == b""
    # The response then re-points the client at the server the scheduler chose.
    assert insert.token(servers[0]).encode() in set_cookie_value(
        insert.response_headers(servers[0], [])
    )


# Rewrite cookie


def test_rewrite_prefixes_the_application_cookie_with_the_server(rewrite, servers):
    token = rewrite.token(servers[0]).encode()

    headers = rewrite.response_headers(
        servers[0], [b"lang=en", b"JSESSIONID=abc123; Path=/; HttpOnly"]
    )

    assert headers == [
        (b"Set-Cookie", b"lang=en"),
        (b"Set-Cookie", b"JSESSIONID=" + token + b"~abc123; Path=/; HttpOnly"),
    ]


def test_rewrite_leaves_responses_without_the_cookie_alone(rewrite, servers):
    assert rewrite.response_headers(servers[0], []) is None
    assert rewrite.response_headers(servers[0], [b"lang=en", b"XJSESSIONID=1"]) is None
    # An empty value deletes the cookie; there is nothing to tag.
    assert rewrite.response_headers(servers[0], [b"JSESSIONID=; Max-Age=0"]) is None


def test_rewrite_round_trip_restores_the_application_value(rewrite, servers):
    headers = rewrite.response_headers(servers[1], [b"JSESSIONID=abc~123; Path=/"])
    set_value = set_cookie_value(headers, b"JSESSIONID=")
    browser_cookie = set_value.split(b";")[0]

    backend, forwarded = rewrite.backend_for_request(
        b"lang=en; " + browser_cookie, rewrite.index(servers)
    )

    assert backend is servers[1]
    assert forwarded == b"lang=en; JSESSIONID=abc~123"


def test_rewrite_handles_quoted_values(rewrite, servers):
    headers = rewrite.response_headers(servers[0], [b'JSESSIONID="q v"; Secure'])
    browser_cookie = set_cookie_value(headers, b"JSESSIONID=").split(b";")[0]

    backend, forwarded = rewrite.backend_for_request(browser_cookie, rewrite.index(servers))

    assert backend is servers[0]
    assert forwarded == b'JSESSIONID="q v"'


def test_rewrite_does_not_strip_a_tilde_of_the_application(rewrite, servers):
    # A cookie set before persistence was enabled carries no token; its "~" belongs to the app.
    backend, forwarded = rewrite.backend_for_request(b"JSESSIONID=user~42", rewrite.index(servers))

    assert (backend, forwarded) == (None, None)


def test_rewrite_strips_the_token_of_a_server_that_is_gone(rewrite, servers):
    stale = Backend("srv-removed", "10.0.0.9", 8080)
    cookie = b"JSESSIONID=" + rewrite.token(stale).encode() + b"~abc"

    assert rewrite.backend_for_request(cookie, rewrite.index(servers)) == (None, b"JSESSIONID=abc")


def test_rewrite_needs_a_valid_cookie_name():
    with pytest.raises(ValueError, match="needs the name"):
        CookiePersistence("rewrite_cookie")
    with pytest.raises(ValueError, match="not a valid cookie name"):
        CookiePersistence("rewrite_cookie", cookie_name="a=b")
    with pytest.raises(ValueError, match="session persistence mode"):
        CookiePersistence("sticky")


def test_long_secret_is_accepted(servers):
    persistence = CookiePersistence("insert_cookie", secret=b"x" * 200)

    assert len(persistence.token(servers[0])) == 16


# Source IP (TCP and TCP SSL)


def test_source_ip_remembers_a_client_until_it_is_idle_too_long(servers):
    clock = FakeClock()
    sticky = SourceIpPersistence(60, clock=clock)

    assert sticky.get("203.0.113.5") is None
    sticky.remember("203.0.113.5", servers[1])
    clock.now += 59
    assert sticky.get("203.0.113.5") is servers[1]
    # Each use restarts the idle timeout.
    clock.now += 59
    assert sticky.get("203.0.113.5") is servers[1]
    clock.now += 60
    assert sticky.get("203.0.113.5") is None
    assert sticky.get("203.0.113.6") is None


@pytest.mark.parametrize("state", ["unhealthy", "weight 0"])
def test_source_ip_drops_a_server_that_cannot_take_traffic(servers, state):
    clock = FakeClock()
    sticky = SourceIpPersistence(60, clock=clock)
    sticky.remember("203.0.113.5", servers[0])
    if state == "unhealthy":
        servers[0].healthy = False
    else:
        servers[0].weight = 0

    assert sticky.get("203.0.113.5") is None

    sticky.remember("203.0.113.5", servers[1])
    assert sticky.get("203.0.113.5") is servers[1]


def test_source_ip_table_forgets_idle_clients_and_stays_bounded(servers):
    clock = FakeClock()
    sticky = SourceIpPersistence(10, clock=clock, max_entries=100)

    for n in range(50):
        sticky.remember(f"10.0.0.{n}", servers[0])
    clock.now += 11
    sticky.remember("10.0.1.1", servers[1])
    assert len(sticky) == 1

    for n in range(250):
        sticky.remember(f"10.0.2.{n}", servers[0])
    assert len(sticky) <= 101
    # The most recent clients are the ones kept.
    assert sticky.get("10.0.2.249") is servers[0]


def test_source_ip_timeout_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        SourceIpPersistence(0)
