"""Whitelist and blacklist access control for IPv4 and IPv6 clients (seed 000)."""

import ipaddress
import random

import pytest

from dataplane.acl import AccessControl, NetworkSet, format_ip, parse_ip

CIDRS = ["10.0.0.0/8", "192.0.2.7", "198.51.100.0/24", "2001:db8::/32", "fe80::1/128"]


@pytest.mark.parametrize("mode", ["whitelist", "blacklist"])
def test_empty_list_forwards_everything(mode):
    acl = AccessControl(mode, [])

    assert acl.allows("203.0.113.1")
    assert acl.allows("2001:db8::1")


@pytest.mark.parametrize(
    ("ip", "listed"),
    [
        ("10.1.2.3", True),
        ("10.255.255.255", True),
        ("11.0.0.0", False),
        ("9.255.255.255", False),
        ("192.0.2.7", True),  # a bare address is a /32
        ("192.0.2.8", False),
        ("198.51.100.200", True),
        ("198.51.101.1", False),
        ("2001:db8::1", True),
        ("2001:db8:ffff:ffff::1", True),
        ("2001:db9::1", False),
        ("fe80::1", True),
        ("fe80::2", False),
        ("::ffff:10.9.8.7", True),  # IPv4-mapped IPv6 is the IPv4 client it carries
        ("::ffff:203.0.113.1", False),
    ],
)
def test_whitelist_and_blacklist_are_opposites(ip, listed):
    assert AccessControl("whitelist", CIDRS).allows(ip) is listed
    assert AccessControl("blacklist", CIDRS).allows(ip) is not listed


def test_host_bits_in_a_cidr_are_ignored():
    acl = AccessControl("whitelist", ["10.1.2.3/16"])

    assert acl.allows("10.1.200.1")
    assert not acl.allows("10.2.0.1")


def test_ipv4_mapped_block_in_the_list_covers_ipv4_clients():
    acl = AccessControl("blacklist", ["::ffff:192.0.2.0/120"])

    assert not acl.allows("192.0.2.99")
    assert not acl.allows("::ffff:192.0.2.99")
    assert acl.allows("192.0.3.1")


def test_ipv6_zone_index_is_ignored():
    assert not AccessControl("blacklist", ["fe80::/10"]).allows("fe80::1%eth0")


def test_ipv4_catch_all_block_does_not_cover_ipv6():
    acl = AccessControl("whitelist", ["0.0.0.0/0"])

    assert acl.allows("203.0.113.1")
    assert not acl.allows("2001:db8::1")


@pytest.mark.parametrize("bad", ["not-an-ip", "", "1.2.3.4.5", "10.0.0.1%eth0", "1.2.3.\u00e9"])
def test_unreadable_client_address_is_refused(bad):
    assert not AccessControl("whitelist", CIDRS).allows(bad)
    assert not AccessControl("blacklist", CIDRS).allows(bad)


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "banana", "2001:db8::/129", "10.0.0/8x"])
def test_invalid_entry_is_refused_with_its_text(bad):
    with pytest.raises(ValueError, match="is not an IP address or CIDR block"):
        AccessControl("whitelist", ["10.0.0.0/8", bad])


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="access control mode"):
        AccessControl("greylist", ["10.0.0.0/8"])


def test_cached_answers_stay_correct_past_the_cache_size():
    acl = AccessControl("whitelist", ["10.0.0.0/24"], cache_size=16)

    answers = [acl.allows(f"10.0.{n // 256}.{n % 256}") for n in range(600)]

    assert answers == [n < 256 for n in range(600)]
    assert acl.allows("10.0.0.5")
    assert not acl.allows("10.0.1.5")


def test_many_blocks_agree_with_the_ipaddress_module():
    rng = random.Random(7)
    networks = [
        ipaddress.ip_network((rng.getrandbits(32), rng.randint(8, 32)), strict=False)
        for _ in range(1_000)
    ] + [
        ipaddress.ip_network((rng.getrandbits(128), rng.randint(16, 128)), strict=False)
        for _ in range(300)
    ]
    acl = AccessControl("whitelist", [str(network) for network in networks])
    # Probe addresses inside listed blocks as well as random ones, which are mostly outside.
    probes = [str(network[-1]) for network in networks[::10]]
    probes += [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(1_000)]
    probes += [str(ipaddress.IPv6Address(rng.getrandbits(128))) for _ in range(300)]

    for probe in probes:
        address = ipaddress.ip_address(probe)
        expected = any(
            address in network for network in networks if network.version == address.version
        )
        assert acl.allows(probe) is expected, probe
    assert sum(acl.allows(probe) for probe in probes) >= len(networks) // 10


def test_network_set_membership_and_address_helpers():
    networks = NetworkSet(["10.0.0.0/8", "2001:db8::/32"])

    assert "10.1.1.1" in networks
    assert "2001:db8::5" in networks
    assert "11.1.1.1" not in networks
    assert "junk" not in networks
    assert format_ip(*parse_ip("::ffff:10.0.0.1")) == "10.0.0.1"
    assert format_ip(*parse_ip("2001:0DB8:0000::0001")) == "2001:db8::1"
    assert parse_ip("garbage") is None
