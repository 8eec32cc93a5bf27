"""Advanced forwarding rules (seed 002): validation messages, every matcher, every action."""

import pytest

from dataplane.rules import (
    FixedResponseAction,
    ForwardAction,
    ForwardingRule,
    RedirectAction,
    RuleAction,
    RuleCondition,
    RuleError,
    RuleTable,
    split_target,
    validate_rules,
)

FORWARD = RuleAction("forward", server_group_id="sgp-api")


def rule(*conditions: RuleCondition, action: RuleAction = FORWARD, id: str = "r1"):
    return ForwardingRule(id, tuple(conditions), action)


def cond(type: str, *values: str, **kwargs) -> RuleCondition:
    return RuleCondition(type, tuple(values), **kwargs)


def matches(
    condition: RuleCondition,
    *,
    method=b"GET",
    path=b"/",
    query=b"",
    host=b"www.example.com",
    headers=None,
    client_ip="198.51.100.7",
) -> bool:
    table = RuleTable([rule(condition)])
    found = table.match(method, path, query, host, headers or {}, client_ip)
    return found is not None


def messages(*rules: ForwardingRule, **kwargs) -> list[str]:
    return [str(error) for error in validate_rules(list(rules), **kwargs)]


# -- validation -----------------------------------------------------------------------------------


def test_a_valid_rule_list_has_no_errors():
    rules = [
        rule(cond("host", "*.example.com", "example.org"), cond("path", "/api/"), id="r1"),
        rule(cond("method", "GET", "HEAD"), cond("header", "x-v*", name="X-Version"), id="r2"),
        rule(cond("query", "lang=en"), cond("source_ip", "10.0.0.0/8", "2001:db8::/32"), id="r3"),
        rule(
            cond("path", "^/img/.+[.]png$", match="regex"),
            action=RuleAction("redirect", status_code=301, protocol="https"),
            id="r4",
        ),
        rule(
            cond("path", "/maintenance", match="exact"),
            action=RuleAction("fixed_response", status_code=503, body="back soon"),
            id="r5",
        ),
    ]

    assert validate_rules(rules, server_group_ids={"sgp-api"}) == []
    assert len(RuleTable(rules)) == 5


def test_rule_error_carries_path_and_message():
    error = RuleError("forwarding_rules[0].id", "must not be empty")

    assert error.path == "forwarding_rules[0].id"
    assert error.message == "must not be empty"
    assert str(error) == "forwarding_rules[0].id: must not be empty"
    assert isinstance(error, ValueError)


def test_errors_use_the_given_path_prefix():
    errors = validate_rules([rule()], path="listeners[2].forwarding_rules")

    assert errors[0].path == "listeners[2].forwarding_rules[0].conditions"


def test_table_refuses_an_invalid_list_with_the_first_error():
    with pytest.raises(RuleError, match=r"forwarding_rules\[0\]\.conditions: at least one"):
        RuleTable([rule()])


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ([rule(cond("path", "/"), id="")], "forwarding_rules[0].id: must not be empty"),
        (
            [rule(cond("path", "/"), id="a"), rule(cond("path", "/"), id="a")],
            "forwarding_rules[1].id: duplicate rule id 'a'",
        ),
        (
            [ForwardingRule("r1", (cond("path", "/"),), FORWARD, name="n" * 256)],
            "forwarding_rules[0].name: longer than 255 characters",
        ),
        ([rule()], "forwarding_rules[0].conditions: at least one condition is needed"),
        (
            [rule(*[cond("path", "/")] * 11)],
            "forwarding_rules[0].conditions: at most 10 conditions are allowed",
        ),
    ],
)
def test_rule_level_errors(rules, expected):
    assert any(message.startswith(expected) for message in messages(*rules)), messages(*rules)


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (cond("cookie", "a=b"), ".type: 'cookie' is not one of host, path, method, header"),
        (cond("path"), ".values: at least one value is needed"),
        (cond("path", *["/a"] * 11), ".values: at most 10 values are allowed"),
        (cond("path", ""), ".values[0]: must not be empty"),
        (cond("path", "/" + "a" * 128), ".values[0]: longer than 128 characters"),
        (cond("path", "/ok", "api"), ".values[1]: must start with /"),
        (cond("path", "/a b"), ".values[0]: may hold only visible characters"),
        (cond("path", "/a?b=1"), ".values[0]: may hold only visible characters"),
        (cond("path", "/a", match="glob"), ".match: 'glob' is not one of prefix, exact, regex"),
        (cond("path", "^/(a", match="regex"), ".values[0]: not a valid regular expression"),
        (cond("path", "a" * 257, match="regex"), ".values[0]: longer than 256 characters"),
        (cond("method", "get"), ".values[0]: 'get' is not one of GET, HEAD, POST"),
        (cond("method", "CONNECT"), ".values[0]: 'CONNECT' is not one of"),
        (cond("header", "v"), ".name: a header condition needs a header name"),
        (cond("header", "v", name="X Bad"), ".name: 'X Bad' is not a header name"),
        (cond("path", "/", name="X-A"), ".name: only a header condition has a name"),
        (cond("header", "caf\u00e9", name="X-A"), ".values[0]: may hold only printable ASCII"),
        (cond("query", "lang"), ".values[0]: 'lang' must look like key=value"),
        (cond("query", "=en"), ".values[0]: '=en' must look like key=value"),
        (cond("query", "a=1&b=2"), ".values[0]: may hold only visible characters"),
        (cond("source_ip", "10.0.0.0/33"), ".values[0]: '10.0.0.0/33' is not an IP address"),
        (cond("source_ip", "example.com"), ".values[0]: 'example.com' is not an IP address"),
        (cond("host", "exa_mple.com"), ".values[0]: 'exa_mple.com' is not a domain name"),
        (cond("host", "www.*.example.com"), ".values[0]: 'www.*.example.com' is not a domain"),
        (cond("host", "test*.example.com"), ".values[0]: 'test*.example.com' is not a domain"),
    ],
)
def test_condition_errors(condition, expected):
    found = messages(rule(condition))

    assert any(m.startswith("forwarding_rules[0].conditions[0]" + expected) for m in found), found


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (RuleAction("drop"), ".type: 'drop' is not one of forward, redirect, fixed_response"),
        (RuleAction("forward"), ".server_group_id: choose a server group"),
        (
            RuleAction("forward", server_group_id="sgp-gone"),
            ".server_group_id: no server group 'sgp-gone'",
        ),
        (
            RuleAction("redirect", status_code=304, protocol="https"),
            ".status_code: 304 is not one of 301, 302, 303, 307, 308",
        ),
        (RuleAction("redirect", protocol="ftp"), ".protocol: 'ftp' is not http or https"),
        (RuleAction("redirect", port=0), ".port: 0 is out of range 1-65535"),
        (RuleAction("redirect", port=70000), ".port: 70000 is out of range 1-65535"),
        (RuleAction("redirect", path="/x${file}"), ".path: unknown placeholder ${file}"),
        (RuleAction("redirect", host="${path}.example.com"), ".host: unknown placeholder ${path}"),
        (RuleAction("redirect", host=""), ".host: must not be empty"),
        (RuleAction("redirect", host="bad host"), ".host: 'bad host' is not a domain name"),
        (RuleAction("redirect", host="-bad.example.com"), ".host: '-bad.example.com' is not a"),
        (RuleAction("redirect", path="new"), ".path: must start with / or ${path}"),
        (RuleAction("redirect", path="/a b"), ".path: may hold only visible characters"),
        (RuleAction("redirect", query="?a=1"), ".query: give the query without the leading ?"),
        (RuleAction("redirect", query="a=1#top"), ".query: may hold only visible characters"),
        (RuleAction("redirect"), ": a redirect must change the protocol, host, port, path"),
        (RuleAction("fixed_response", status_code=302), ".status_code: 302 is not a 2xx, 4xx"),
        (RuleAction("fixed_response", status_code=199), ".status_code: 199 is not a 2xx, 4xx"),
        (RuleAction("fixed_response", status_code=600), ".status_code: 600 is not a 2xx, 4xx"),
        (
            RuleAction("fixed_response", content_type="image/png"),
            ".content_type: 'image/png' is not one of text/plain, text/css",
        ),
        (
            RuleAction("fixed_response", body="\u00e9" * 513),
            ".body: 1026 bytes; at most 1024 allowed",
        ),
    ],
)
def test_action_errors(action, expected):
    found = messages(rule(cond("path", "/"), action=action), server_group_ids={"sgp-api"})

    assert any(m.startswith("forwarding_rules[0].action" + expected) for m in found), found


def test_redirect_to_the_listeners_own_protocol_alone_is_a_loop():
    https_only = rule(cond("path", "/"), action=RuleAction("redirect", protocol="https"))

    assert messages(https_only, listener_protocol="http") == []
    assert messages(https_only, listener_protocol="https") == [
        "forwarding_rules[0].action: a redirect must change the protocol, host, port, path or "
        "query; otherwise it sends the client back to the same URL"
    ]


@pytest.mark.parametrize(
    "action",
    [
        RuleAction("fixed_response", status_code=200),
        RuleAction("fixed_response", status_code=404, content_type="application/json"),
        RuleAction("fixed_response", status_code=599, body="x" * 1024),
        RuleAction("redirect", status_code=308, host="www.${host}"),
        RuleAction("redirect", path="/v2${path}", query="${query}&from=${host}"),
        RuleAction("redirect", port=8443),
    ],
)
def test_action_edges_that_are_accepted(action):
    assert messages(rule(cond("path", "/"), action=action)) == []


def test_all_problems_are_reported_at_once():
    bad = rule(cond("path", "x"), cond("method", "get"), action=RuleAction("forward"))

    assert len(validate_rules([bad])) == 3


# -- host -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (b"www.example.com", True),
        (b"WWW.Example.COM", True),
        (b"www.example.com:8080", True),
        (b"www.example.com.", True),
        (b"example.com", False),
        (b"www.example.org", False),
        (None, False),
        (b"", False),
    ],
)
def test_host_exact(host, expected):
    assert matches(cond("host", "www.example.com"), host=host) is expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (b"api.example.com", True),
        (b"API.example.com:443", True),
        (b"a.b.example.com", False),  # one level only (seed 001)
        (b"test_test.example.com", False),  # 0-9, a-z, A-Z and - only
        (b"example.com", False),
        (b"[2001:db8::1]:80", False),
    ],
)
def test_host_wildcard_follows_the_certificate_rules(host, expected):
    assert matches(cond("host", "*.example.com"), host=host) is expected


def test_host_condition_matches_any_of_its_values():
    condition = cond("host", "a.example.com", "*.example.org")

    assert matches(condition, host=b"a.example.com")
    assert matches(condition, host=b"x.example.org")
    assert not matches(condition, host=b"b.example.com")


# -- path -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (b"/api", True),
        (b"/api/v1/users", True),
        (b"/apiary", True),  # a prefix is a string prefix, as the seed's URL rules are
        (b"/API", False),
        (b"/", False),
        (b"/%61pi/x", True),  # compared percent-decoded
    ],
)
def test_path_prefix(path, expected):
    assert matches(cond("path", "/api"), path=path) is expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [(b"/login", True), (b"/login/", False), (b"/login2", False), (b"/log%69n", True)],
)
def test_path_exact(path, expected):
    assert matches(cond("path", "/login", match="exact"), path=path) is expected


def test_path_exact_value_with_escapes_is_decoded_too():
    assert matches(cond("path", "/a%20b", match="exact"), path=b"/a%20b")
    assert matches(cond("path", "/a%20b", match="exact"), path=b"/a b")


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        (r"\.png$", b"/img/logo.png", True),
        (r"\.png$", b"/img/logo.png.txt", False),
        (r"^/v[0-9]+/", b"/v2/items", True),
        (r"^/v[0-9]+/", b"/api/v2/items", False),
        (r"users/[0-9]+", b"/api/users/42/posts", True),  # search: anywhere in the path
    ],
)
def test_path_regex(pattern, path, expected):
    assert matches(cond("path", pattern, match="regex"), path=path) is expected


# -- method ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "expected"), [(b"POST", True), (b"PUT", True), (b"GET", False), (b"post", False)]
)
def test_method(method, expected):
    assert matches(cond("method", "POST", "PUT"), method=method) is expected


# -- header ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({b"x-canary": b"yes"}, True),
        ({b"x-canary": b"YES"}, True),
        ({b"x-canary": b"yes please"}, False),
        ({b"x-canary": b""}, False),
        ({b"x-other": b"yes"}, False),
        ({}, False),
    ],
)
def test_header_exact_value(headers, expected):
    assert matches(cond("header", "yes", name="X-Canary"), headers=headers) is expected


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("*", b"anything", True),
        ("*", b"", True),
        ("Mozilla/*", b"Mozilla/5.0 (X11)", True),
        ("Mozilla/*", b"curl/8.0", False),
        ("*bot*", b"Googlebot/2.1", True),
        ("v?", b"v2", True),
        ("v?", b"v10", False),
        ("a.b", b"axb", False),  # the dot is literal
    ],
)
def test_header_wildcards(pattern, value, expected):
    condition = cond("header", pattern, name="User-Agent")

    assert matches(condition, headers={b"user-agent": value}) is expected


def test_table_lists_the_header_names_the_proxy_must_keep():
    table = RuleTable(
        [
            rule(cond("header", "1", name="X-A"), cond("header", "2", name="x-b"), id="r1"),
            rule(cond("header", "3", name="X-A"), id="r2"),
            rule(cond("path", "/"), id="r3"),
        ]
    )

    assert table.header_names == {b"x-a", b"x-b"}


# -- query ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"lang=en", True),
        (b"page=2&lang=en", True),
        (b"LANG=EN", True),
        (b"lang=de&lang=en", True),
        (b"lang=english", False),
        (b"lang=", False),
        (b"language=en", False),
        (b"", False),
    ],
)
def test_query_key_value(query, expected):
    assert matches(cond("query", "lang=en"), query=query) is expected


def test_query_values_are_decoded_and_may_use_wildcards():
    condition = cond("query", "q=*shoes*")

    assert matches(condition, query=b"q=red+shoes+sale")
    assert matches(condition, query=b"q=red%20shoes")
    assert not matches(condition, query=b"q=red+boots")


def test_query_condition_matches_any_of_its_pairs():
    condition = cond("query", "a=1", "b=2")

    assert matches(condition, query=b"b=2")
    assert not matches(condition, query=b"a=2&b=1")


# -- source IP ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_ip", "expected"),
    [
        ("10.1.2.3", True),
        ("10.255.255.255", True),
        ("11.0.0.1", False),
        ("192.0.2.5", True),
        ("192.0.2.6", False),
        ("::ffff:10.0.0.9", True),  # an IPv4 client on a dual-stack socket
        ("2001:db8::1", True),
        ("2001:db9::1", False),
        ("", False),
        ("not-an-ip", False),
    ],
)
def test_source_ip(client_ip, expected):
    condition = cond("source_ip", "10.0.0.0/8", "192.0.2.5", "2001:db8::/32")

    assert matches(condition, client_ip=client_ip) is expected


# -- combining rules ------------------------------------------------------------------------------


def test_every_condition_of_a_rule_must_match():
    table = RuleTable([rule(cond("path", "/api"), cond("method", "POST"))])

    assert table.match(b"POST", b"/api/x", b"", None, {}, "192.0.2.1") is not None
    assert table.match(b"GET", b"/api/x", b"", None, {}, "192.0.2.1") is None
    assert table.match(b"POST", b"/web", b"", None, {}, "192.0.2.1") is None


def test_first_matching_rule_wins():
    table = RuleTable(
        [
            rule(
                cond("path", "/api/admin"),
                action=RuleAction("forward", server_group_id="sgp-admin"),
                id="admin",
            ),
            rule(
                cond("path", "/api"),
                action=RuleAction("forward", server_group_id="sgp-api"),
                id="api",
            ),
        ]
    )

    admin = table.match(b"GET", b"/api/admin/users", b"", None, {}, "192.0.2.1")
    api = table.match(b"GET", b"/api/items", b"", None, {}, "192.0.2.1")

    assert isinstance(admin, ForwardAction)
    assert (admin.rule_id, admin.server_group_id) == ("admin", "sgp-admin")
    assert (api.rule_id, api.server_group_id) == ("api", "sgp-api")
    assert table.server_group_ids == {"sgp-admin", "sgp-api"}


def test_no_matching_rule_means_the_default_server_group():
    table = RuleTable([rule(cond("path", "/api"))])

    assert table.match(b"GET", b"/", b"", b"example.com", {}, "192.0.2.1") is None


def test_empty_table_matches_nothing():
    table = RuleTable([])

    assert len(table) == 0
    assert table.match(b"GET", b"/", b"", None, {}, "192.0.2.1") is None
    assert table.header_names == frozenset()


# -- redirect -------------------------------------------------------------------------------------


def redirect(**kwargs) -> RedirectAction:
    table = RuleTable([rule(cond("path", "/"), action=RuleAction("redirect", **kwargs))])
    action = table.match(b"GET", b"/", b"", None, {}, "192.0.2.1")
    assert isinstance(action, RedirectAction)
    return action


def test_http_to_https_redirect_keeps_host_path_and_query_and_goes_to_443():
    action = redirect(protocol="https")

    location = action.location(b"http", b"www.example.com", 80, b"/a/b%20c", b"x=1&y=2")

    assert location == b"https://www.example.com/a/b%20c?x=1&y=2"
    assert (action.status, action.reason) == (302, b"Found")


def test_redirect_keeps_a_non_default_port_when_the_protocol_stays():
    action = redirect(host="new.example.com")

    assert action.location(b"http", b"old.example.com:8080", 8080, b"/p", b"") == (
        b"http://new.example.com:8080/p"
    )


def test_redirect_to_an_explicit_port():
    action = redirect(protocol="https", port=8443)

    assert action.location(b"http", b"example.com", 80, b"/", b"") == b"https://example.com:8443/"


def test_redirect_omits_the_default_port_of_the_target_protocol():
    action = redirect(port=80, path="/moved${path}")

    assert action.location(b"http", b"example.com:8080", 8080, b"/x", b"") == (
        b"http://example.com/moved/x"
    )


def test_redirect_templates_use_every_placeholder():
    action = redirect(
        host="www.${host}",
        path="/${protocol}/${port}${path}",
        query="${query}&from=${host}",
    )

    location = action.location(b"https", b"example.com", 443, b"/item", b"id=7")

    assert location == b"https://www.example.com/https/443/item?id=7&from=example.com"


def test_redirect_with_an_empty_query_has_no_question_mark():
    action = redirect(path="/new")

    assert action.location(b"http", b"example.com", 80, b"/old", b"") == b"http://example.com/new"


def test_redirect_replaces_the_query():
    action = redirect(query="v=2")

    assert action.location(b"http", b"example.com", 80, b"/p", b"v=1") == (
        b"http://example.com/p?v=2"
    )


def test_redirect_without_a_host_header_is_relative():
    action = redirect(path="/new${path}")

    assert action.location(b"http", None, 80, b"/x", b"a=1") == b"/new/x?a=1"


def test_redirect_keeps_an_ipv6_host_literal():
    action = redirect(protocol="https")

    assert action.location(b"http", b"[2001:db8::1]:80", 80, b"/", b"") == (
        b"https://[2001:db8::1]/"
    )


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (301, b"Moved Permanently"),
        (302, b"Found"),
        (303, b"See Other"),
        (307, b"Temporary Redirect"),
        (308, b"Permanent Redirect"),
    ],
)
def test_redirect_status_codes(code, reason):
    action = redirect(status_code=code, protocol="https")

    assert (action.status, action.reason) == (code, reason)


# -- fixed response -------------------------------------------------------------------------------


def fixed(**kwargs) -> FixedResponseAction:
    table = RuleTable([rule(cond("path", "/"), action=RuleAction("fixed_response", **kwargs))])
    action = table.match(b"GET", b"/", b"", None, {}, "192.0.2.1")
    assert isinstance(action, FixedResponseAction)
    return action


def test_fixed_response_defaults():
    action = fixed()

    assert (action.status, action.reason) == (200, b"OK")
    assert action.content_type == b"text/plain"
    assert action.body == b""


def test_fixed_response_carries_status_type_and_body():
    action = fixed(status_code=503, content_type="application/json", body='{"down": true}')

    assert (action.status, action.reason) == (503, b"Service Unavailable")
    assert action.content_type == b"application/json"
    assert action.body == b'{"down": true}'


def test_fixed_response_body_of_exactly_1024_bytes_and_an_unnamed_code():
    action = fixed(status_code=599, body="\u00e9" * 512)

    assert len(action.body) == 1024
    assert (action.status, action.reason) == (599, b"")


# -- request targets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/", (b"/", b"")),
        (b"/a/b?x=1&y=2", (b"/a/b", b"x=1&y=2")),
        (b"/a?", (b"/a", b"")),
        (b"/a#frag", (b"/a", b"")),
        (b"http://example.com/a?b=1", (b"/a", b"b=1")),
        (b"http://example.com", (b"/", b"")),
        (b"*", (b"*", b"")),
    ],
)
def test_split_target(target, expected):
    assert split_target(target) == expected
