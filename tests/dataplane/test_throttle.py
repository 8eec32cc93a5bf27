"""The QPS per client IP limiter (dataplane.throttle) on a fake clock: the burst, the steady rate,
Retry-After, independent addresses, IPv6 clients counted per /64, bounded memory under 100,000
addresses, and a new generation taking over the old one's tables."""

from __future__ import annotations

import pytest

from dataplane.config import Snapshot
from dataplane.protocols import ListenerSettings
from dataplane.stats import ListenerStats
from dataplane.throttle import (
    MAX_ADDRESSES,
    MAX_RULE_ADDRESSES,
    QpsLimiter,
    carry_over,
    client_key,
)
from dataplane.upstream import UpstreamPool
from dataplane.workers import _merge_listeners

T0 = 1000.0


def passed(limiter: QpsLimiter, client_ip: str, count: int, now: float) -> int:
    return sum(1 for _ in range(count) if limiter.admit(client_ip, now) == 0)


def test_a_burst_of_fifty_at_ten_per_second_lets_ten_through():
    limiter = QpsLimiter(10)
    assert passed(limiter, "198.51.100.7", 50, T0) == 10


def test_over_the_limit_the_answer_is_whole_seconds_to_wait():
    limiter = QpsLimiter(10)
    passed(limiter, "198.51.100.7", 10, T0)
    assert limiter.admit("198.51.100.7", T0) == 1
    # A slow limit waits longer than one second for the next request.
    slow = QpsLimiter(1)
    assert slow.admit("198.51.100.7", T0) == 0
    assert slow.admit("198.51.100.7", T0 + 0.25) == 1


def test_the_steady_rate_is_the_limit():
    limiter = QpsLimiter(10)
    passed(limiter, "198.51.100.7", 10, T0)
    # Then 100 requests a second for 10 seconds: 10 a second pass, 100 in all.
    through = sum(passed(limiter, "198.51.100.7", 1, T0 + step / 100) for step in range(1, 1001))
    assert 99 <= through <= 101


def test_a_refused_request_costs_the_client_nothing_more():
    """Only requests that pass use the allowance: hammering while refused does not push the
    client's next turn further away."""
    limiter = QpsLimiter(10)
    passed(limiter, "198.51.100.7", 10, T0)
    assert passed(limiter, "198.51.100.7", 1000, T0 + 0.05) == 0
    assert limiter.admit("198.51.100.7", T0 + 0.1) == 0


def test_addresses_are_limited_independently():
    limiter = QpsLimiter(5)
    assert passed(limiter, "198.51.100.7", 20, T0) == 5
    assert passed(limiter, "198.51.100.8", 20, T0) == 5
    assert passed(limiter, "2001:db8::1", 20, T0) == 5


def test_ipv6_addresses_in_one_64_share_one_budget():
    """An IPv6 client holds a whole /64: new addresses from it are the same client, and take one
    entry of the table however many it uses."""
    limiter = QpsLimiter(5)
    assert passed(limiter, "2001:db8:1:2::a", 3, T0) == 3
    assert passed(limiter, "2001:db8:1:2:ffff:ffff:ffff:ffff", 20, T0) == 2
    rotating = [f"2001:db8:1:2:{n >> 16:x}:{n & 0xFFFF:x}::1" for n in range(1000)]
    assert sum(limiter.admit(address, T0) == 0 for address in rotating) == 0
    assert len(limiter) == 1


def test_ipv6_addresses_in_different_64s_are_limited_independently():
    limiter = QpsLimiter(5)
    assert passed(limiter, "2001:db8:1:2::1", 20, T0) == 5
    assert passed(limiter, "2001:db8:1:3::1", 20, T0) == 5
    # The neighbour below /48 and the one across a /32 are other clients too.
    assert passed(limiter, "2001:db8:2:2::1", 20, T0) == 5
    assert passed(limiter, "2001:db9:1:2::1", 20, T0) == 5


@pytest.mark.parametrize(
    "mapped", ["::ffff:198.51.100.7", "::FFFF:198.51.100.7", "::ffff:c633:6407"]
)
def test_an_ipv4_mapped_address_shares_the_budget_of_its_ipv4_address(mapped):
    """A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d: the same client as a.b.c.d."""
    limiter = QpsLimiter(5)
    assert passed(limiter, "198.51.100.7", 3, T0) == 3
    assert passed(limiter, mapped, 20, T0) == 2
    assert client_key(mapped) == "198.51.100.7"
    assert passed(limiter, "198.51.100.8", 20, T0) == 5


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not an address",
        "fe80::1%eth0",
        "fe80::1%",
        "%eth0",
        ":",
        ":::",
        "2001:db8::1::2",
        "2001:db8::g",
        "[2001:db8::1]",
        "::ffff:",
        "::ffff:999.1.1.1",
        "198.51.100.7:8080",
        "2001:db8::1\x00",
        "2001:db8::\u00e9",
        "\ud800::1",
        "a" * 10_000 + ":",
    ],
)
def test_odd_client_ip_text_is_keyed_without_raising(text):
    limiter = QpsLimiter(1)
    assert isinstance(client_key(text), str)
    assert limiter.admit(text, T0) == 0
    assert limiter.admit(text, T0) == 1


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("2001:db8::1", "2001:0db8:0:0::1"),
        ("2001:db8::1", "2001:DB8::1"),
        ("2001:db8::1", "2001:0DB8:0000:0000:0000:0000:0000:0001"),
        ("fe80::1%eth0", "fe80::1"),
        ("::ffff:198.51.100.7", "0:0:0:0:0:ffff:c633:6407"),
        ("::", "0:0:0:0:0:0:0:0"),
    ],
)
def test_forms_of_one_address_share_one_key_and_budget(one, other):
    assert client_key(one) == client_key(other)
    limiter = QpsLimiter(1)
    assert limiter.admit(one, T0) == 0
    assert limiter.admit(other, T0) == 1


def test_an_idle_address_gets_its_whole_burst_back_and_is_forgotten():
    limiter = QpsLimiter(10)
    passed(limiter, "198.51.100.7", 10, T0)
    assert passed(limiter, "198.51.100.7", 50, T0 + 1.0) == 10
    # A new address arriving later clears idle entries from the stale end.
    limiter.admit("198.51.100.9", T0 + 5.0)
    assert len(limiter) == 1


def test_the_table_stays_bounded_under_100000_addresses_and_the_hot_one_stays_limited():
    """A flood of distinct addresses, all within one second so none has expired: the table never
    grows past its bound, and an address that keeps sending stays tracked and limited."""
    limiter = QpsLimiter(10, capacity=MAX_ADDRESSES)
    hot = "203.0.113.50"
    hot_passed = 0
    largest = 0
    for index in range(100_000):
        # The whole flood within 50 ms, so that no entry has expired (one request at 10 a second
        # is earned back after 100 ms).
        now = T0 + index / 2_000_000
        limiter.admit(f"10.{index >> 16}.{(index >> 8) & 255}.{index & 255}", now)
        largest = max(largest, len(limiter))
        if index % 100 == 0:
            hot_passed += limiter.admit(hot, now) == 0
    assert largest <= MAX_ADDRESSES
    assert len(limiter) == MAX_ADDRESSES
    # 1,000 tries in 50 ms at 10 a second: the burst of 10, and at most one earned meanwhile.
    assert 10 <= hot_passed <= 11


def test_a_full_table_evicts_the_stalest_address():
    limiter = QpsLimiter(1, capacity=3)
    for address in ("a", "b", "c"):
        limiter.admit(address, T0)
    limiter.admit("a", T0 + 0.1)  # refused, but in use: b is now the stalest
    limiter.admit("d", T0 + 0.2)
    assert len(limiter) == 3
    assert limiter.admit("a", T0 + 0.3) == 1  # still tracked, still limited
    assert limiter.admit("b", T0 + 0.3) == 0  # forgotten: a fresh start


@pytest.mark.parametrize(("qps", "capacity"), [(0, 10), (10, 0)])
def test_a_limiter_needs_a_rate_and_room(qps, capacity):
    with pytest.raises(ValueError):
        QpsLimiter(qps, capacity=capacity)


def compiled(qps: int | None, rule_qps: int | None, generation: int = 1) -> ListenerSettings:
    snapshot = Snapshot.from_dict(
        {
            "instance_id": "lb-test0001",
            "generation": generation,
            "listeners": [
                {
                    "id": "lsn-web",
                    "protocol": "http",
                    "port": 8080,
                    "server_group_id": "sgp-web",
                    "qps_per_client_ip": qps,
                    "forwarding_rules": [
                        {
                            "id": "r-api",
                            "conditions": [{"type": "path", "values": ["/api/"]}],
                            "action": {"type": "fixed_response", "body": "api"},
                            "qps_per_client_ip": rule_qps,
                        }
                    ],
                }
            ],
            "server_groups": [{"id": "sgp-web", "name": "web", "servers": []}],
        }
    )
    return ListenerSettings(
        snapshot.listeners[0], snapshot, group=None, tls=None, pool=UpstreamPool(), stats=STATS
    )


STATS = ListenerStats()


def test_a_listener_without_limits_compiles_none():
    settings = compiled(None, None)
    assert settings.throttle is None
    assert settings.rules is not None
    assert settings.rules.limiters == {}


def test_limits_compile_to_limiters_with_their_bounds():
    settings = compiled(100, 7)
    assert settings.throttle is not None
    assert (settings.throttle.qps, settings.throttle.capacity) == (100, MAX_ADDRESSES)
    rule = settings.rules.limiters["r-api"]  # type: ignore[union-attr]
    assert (rule.qps, rule.capacity) == (7, MAX_RULE_ADDRESSES)


def test_a_new_generation_keeps_clients_over_an_unchanged_limit_limited():
    old = compiled(2, 1)
    old.throttle.admit("198.51.100.7", T0)  # type: ignore[union-attr]
    old.throttle.admit("198.51.100.7", T0)  # type: ignore[union-attr]
    old.rules.limiters["r-api"].admit("198.51.100.7", T0)  # type: ignore[union-attr]
    STATS.throttled_by_rule.update({"r-api": 3, "r-gone": 4})

    new = compiled(2, 1, generation=2)
    carry_over(old, new)
    assert new.throttle.admit("198.51.100.7", T0) == 1  # type: ignore[union-attr]
    assert new.rules.limiters["r-api"].admit("198.51.100.7", T0) == 1  # type: ignore[union-attr]
    assert STATS.throttled_by_rule == {"r-api": 3}

    # A changed limit starts afresh.
    changed = compiled(3, 1, generation=3)
    carry_over(new, changed)
    assert changed.throttle.admit("198.51.100.7", T0) == 0  # type: ignore[union-attr]


def test_a_supervisor_adds_up_its_workers_throttled_counts():
    """Each worker throttles on its own; the node's status and /metrics add them up."""

    def report(total: int, by_rule: dict[str, int]) -> dict:
        counters = {
            "requests": total,
            "throttled_requests": total,
            "throttled_by_rule": by_rule,
            "responses": {"4xx": total},
        }
        return {
            "listeners": {
                "lsn-web": {"status": "running", "reason": "", "counters": counters, "backends": []}
            }
        }

    merged = _merge_listeners([report(3, {"r-api": 2}), report(5, {"r-api": 1, "r-b": 4})])
    counters = merged["lsn-web"]["counters"]
    assert counters["throttled_requests"] == 8
    assert counters["throttled_by_rule"] == {"r-api": 3, "r-b": 4}
