"""Wildcard certificate rules of seed 001's FAQ, and SNI certificate selection."""

import pytest

from dataplane.hostnames import CertificateSelector, is_recognized_wildcard, wildcard_matches


@pytest.mark.parametrize(
    "name",
    [
        "*.example.com",  # seed 001
        "*test.example.com",  # seed 001
        "*-api.example.com",
        "*.EXAMPLE.com",
        "*.example.com.",  # trailing root dot
        "*.com",
    ],
)
def test_recognized_wildcards(name):
    assert is_recognized_wildcard(name)


@pytest.mark.parametrize(
    "name",
    [
        "test*.example.com",  # seed 001: the '*' must be at the very start
        "te*st.example.com",
        "*.*.example.com",  # more than one '*'
        "**.example.com",
        "www.*.example.com",
        "*",  # '*' alone covers no domain
        "*.",
        "",
        "*..example.com",  # empty label
        "*_x.example.com",  # the label around '*' must be a valid label
        "www.example.com",  # not a wildcard at all
    ],
)
def test_unrecognized_wildcards(name):
    assert not is_recognized_wildcard(name)


@pytest.mark.parametrize(
    ("pattern", "hostname"),
    [
        # seed 001 FAQ
        ("*.example.com", "test.example.com"),
        ("*.example.com", "xn--fsqu00a.example.com"),
        ("*test.example.com", "abctest.example.com"),
        # edge cases
        ("*.example.com", "TEST.Example.COM"),
        ("*.EXAMPLE.COM", "test.example.com"),
        ("*.example.com", "test.example.com."),
        ("*.example.com.", "test.example.com"),
        ("*.example.com", "a-b-9.example.com"),
        ("*.example.com", "-.example.com"),
        ("*test.example.com", "x-test.example.com"),
        ("www.example.com", "WWW.example.com."),
        ("test_test.example.com", "test_test.example.com"),  # exact names are plain compares
    ],
)
def test_matches(pattern, hostname):
    assert wildcard_matches(pattern, hostname)


@pytest.mark.parametrize(
    ("pattern", "hostname"),
    [
        # seed 001 FAQ
        ("*.example.com", "test.test.example.com"),  # one level only
        ("*.example.com", "test_test.example.com"),  # only 0-9, A-Z, a-z and '-'
        ("*test.example.com", "xn--fsqu00atest.example.com"),  # IDNA needs a whole-label '*'
        ("test*.example.com", "testabc.example.com"),  # not a recognized wildcard
        # edge cases
        ("*.example.com", "example.com"),  # '*' matches at least one character
        ("*test.example.com", "test.example.com"),
        ("*test.example.com", "abctest.test.example.com"),
        ("*test.example.com", "abctester.example.com"),
        ("*.example.com", ".example.com"),  # empty label
        ("*.example.com", "a..example.com"),
        ("*.example.com", "test.example.org"),
        ("*.example.com", "test.notexample.com"),
        ("*.example.com", "*.example.com"),  # a literal '*' is not a label character
        ("*.example.com", "te st.example.com"),
        ("*.example.com", ""),
        ("*", "localhost"),
        ("*.*.example.com", "a.b.example.com"),
        ("www.example.com", "www2.example.com"),
        ("", ""),
    ],
)
def test_does_not_match(pattern, hostname):
    assert not wildcard_matches(pattern, hostname)


def test_unicode_host_name_is_compared_in_its_idna_form():
    assert wildcard_matches("*.example.com", "\u4e2d\u6587.example.com")
    assert wildcard_matches("xn--fiq228c.example.com", "\u4e2d\u6587.example.com")
    assert not wildcard_matches("*test.example.com", "\u4e2d\u6587test.example.com")


@pytest.fixture
def selector():
    return CertificateSelector(
        {
            "cert-default": ["lb.example.net"],
            "cert-wild": ["*.example.com", "example.com"],
            "cert-api": ["*api.example.com"],
            "cert-www": ["www.example.com"],
            "cert-bad-wildcard": ["test*.example.com"],
            "cert-other": ["*.example.org", "shop.example.org"],
        },
        default="cert-default",
    )


@pytest.mark.parametrize(
    ("server_name", "expected"),
    [
        ("www.example.com", "cert-www"),  # exact beats wildcard
        ("WWW.EXAMPLE.COM.", "cert-www"),
        ("blog.example.com", "cert-wild"),
        ("example.com", "cert-wild"),
        ("myapi.example.com", "cert-api"),  # longer wildcard beats shorter
        ("api.example.com", "cert-wild"),  # '*api' needs at least one character before 'api'
        ("xn--fsqu00a.example.com", "cert-wild"),
        ("xn--fsqu00aapi.example.com", "cert-wild"),  # IDNA cannot match '*api'
        ("testabc.example.com", "cert-wild"),  # 'test*' is never recognized
        ("a.b.example.com", "cert-default"),  # one level only
        ("under_score.example.com", "cert-default"),
        ("shop.example.org", "cert-other"),
        ("lb.example.net", "cert-default"),
        ("unknown.test", "cert-default"),
        ("", "cert-default"),
        (None, "cert-default"),
        ("bad..name", "cert-default"),
    ],
)
def test_selector_picks_the_most_specific_certificate(selector, server_name, expected):
    assert selector.select(server_name) == expected


def test_selector_without_default_returns_none_for_unmatched_names():
    selector = CertificateSelector({"cert-a": ["a.example.com"]}, default=None)

    assert selector.select("a.example.com") == "cert-a"
    assert selector.select("b.example.com") is None
    assert selector.select(None) is None


def test_selector_keeps_the_first_certificate_for_a_name_given_twice():
    selector = CertificateSelector(
        {
            "cert-1": ["*.example.com", "x.example.com"],
            "cert-2": ["*.example.com", "x.example.com"],
        },
        default=None,
    )

    assert selector.select("x.example.com") == "cert-1"
    assert selector.select("y.example.com") == "cert-1"
