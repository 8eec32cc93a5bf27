"""Retrieve Client IP from X-Forwarded-For through trusted proxies (seed 001)."""

import pytest

from dataplane.clientip import ClientIpResolver

PROXY_1 = "192.0.2.10"
PROXY_2 = "192.0.2.20"


@pytest.fixture
def trust_all():
    return ClientIpResolver(["0.0.0.0/0"])


@pytest.fixture
def trusted_list():
    # The console writes the seed's "proxy1 IP;proxy2 IP" form.
    return ClientIpResolver([f"{PROXY_1};{PROXY_2}", "10.0.0.0/8", "2001:db8:1::/48"])


def test_trust_all_takes_the_leftmost_address(trust_all):
    xff = b"203.0.113.5, 198.51.100.1, 192.0.2.10"

    assert trust_all.resolve("10.1.1.1", xff) == "203.0.113.5"


def test_trust_all_skips_malformed_entries(trust_all):
    assert trust_all.resolve("10.1.1.1", b"unknown, , 203.0.113.5, 10.0.0.1") == "203.0.113.5"
    assert trust_all.resolve("10.1.1.1", b"unknown, _hidden") == "10.1.1.1"


def test_without_header_the_peer_is_the_client(trust_all, trusted_list):
    assert trust_all.resolve("10.1.1.1", None) == "10.1.1.1"
    assert trusted_list.resolve(PROXY_1, b"") == PROXY_1


def test_list_scans_from_the_right_for_the_first_untrusted_address(trusted_list):
    # 198.51.100.9 sent a forged "6.6.6.6"; proxy 2 appended the client, proxy 1 appended proxy 2.
    xff = b"6.6.6.6, 198.51.100.9, 192.0.2.20"

    assert trusted_list.resolve(PROXY_1, xff) == "198.51.100.9"


def test_untrusted_peer_is_its_own_client_whatever_it_claims(trusted_list):
    assert trusted_list.resolve("203.0.113.66", b"1.2.3.4") == "203.0.113.66"


def test_all_hops_trusted_gives_the_leftmost(trusted_list):
    assert trusted_list.resolve(PROXY_1, b"10.0.0.5, 192.0.2.20") == "10.0.0.5"


def test_list_stops_at_a_malformed_entry(trusted_list):
    # "unknown" came from a trusted hop that could not say who its peer was; anything left of it
    # is unverifiable, so the last trusted hop is as far as we can see.
    assert trusted_list.resolve(PROXY_1, b"6.6.6.6, unknown, 10.0.0.7") == "10.0.0.7"
    assert trusted_list.resolve(PROXY_1, b"6.6.6.6, garbage") == PROXY_1


def test_ipv6_and_ports_and_brackets(trusted_list):
    assert trusted_list.resolve("2001:db8:1::1", b"[2001:db8:2::9]:4711") == "2001:db8:2::9"
    assert trusted_list.resolve("2001:db8:1::1", b"2001:DB8:2:0::9") == "2001:db8:2::9"
    assert trusted_list.resolve(PROXY_1, b"198.51.100.9:55000, 10.0.0.1") == "198.51.100.9"
    assert trusted_list.resolve("::ffff:192.0.2.10", b"198.51.100.9") == "198.51.100.9"


def test_non_ascii_and_control_bytes_are_malformed(trust_all, trusted_list):
    assert trust_all.resolve("10.1.1.1", b"\xff\xfe, 203.0.113.5") == "203.0.113.5"
    assert trusted_list.resolve(PROXY_1, b"203.0.113.5, 10.0.0.\x001") == PROXY_1


def test_empty_trusted_list_means_the_feature_is_off():
    resolver = ClientIpResolver([])

    assert not resolver.enabled
    assert resolver.resolve("10.1.1.1", b"203.0.113.5") == "10.1.1.1"


def test_invalid_trusted_entry_is_refused():
    with pytest.raises(ValueError, match=r"'proxy\.example\.com' is not an IP address"):
        ClientIpResolver(["10.0.0.1;proxy.example.com"])
