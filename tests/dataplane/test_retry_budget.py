"""The retry budget and the choice of the next server (dataplane.retry), on a fake clock: retries
counted against the requests of a sliding window, the floor per second, and servers not tried."""

from __future__ import annotations

import pytest

from dataplane.balancing import Backend
from dataplane.config import Listener, ServerGroup, Snapshot
from dataplane.protocols import ListenerSettings, Route, ServerGroupRuntime
from dataplane.retry import (
    IDEMPOTENT_METHODS,
    RetryBudget,
    pick_untried,
    retryable_answer,
)
from dataplane.stats import ListenerStats
from dataplane.upstream import UpstreamPool


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def storm(budget: RetryBudget, clock: FakeClock, requests: int, per_second: int) -> int:
    """`requests` failing requests, `per_second` of them each second, each asking for one
    retry; how many the budget allowed."""
    counter = allowed = 0
    for index in range(requests):
        clock.now = 1000.0 + index // per_second
        counter += 1
        allowed += budget.allow(counter)
    return allowed


def test_a_storm_is_held_to_the_percentage_plus_the_floor():
    clock = FakeClock()
    budget = RetryBudget(20, window=10, min_per_second=3, clock=clock)

    # 1,000 failing requests over 10 seconds, 100 a second.
    allowed = storm(budget, clock, 1000, 100)

    # 20% of the requests, and the floor of 3 for each of the ten seconds at most.
    assert 200 <= allowed <= 200 + 3 * 10


def test_the_floor_lets_a_quiet_listener_retry():
    clock = FakeClock()
    budget = RetryBudget(1, min_per_second=3, clock=clock)
    # One request, and three retries asked in the same second: 1% of one request is none, the
    # floor gives three.
    assert [budget.allow(1) for _ in range(4)] == [True, True, True, False]
    # The next second, the floor is there again.
    clock.now += 1
    assert budget.allow(1) is True


def test_retries_at_100_percent_are_one_per_request():
    clock = FakeClock()
    budget = RetryBudget(100, min_per_second=0, clock=clock)
    assert budget.allow(1) is True
    # The same request asking for a second retry: one retry per request is the whole budget.
    assert budget.allow(1) is False
    assert budget.allow(2) is True


def test_the_window_slides_and_old_retries_are_forgotten():
    clock = FakeClock()
    budget = RetryBudget(10, window=10, min_per_second=0, clock=clock)
    # The first failing request, then 99 more: 10% of 100 requests is ten retries in all.
    assert budget.allow(1) is True
    assert [budget.allow(100) for _ in range(20)].count(True) == 9

    # Ten seconds on, that second has left the window: its retries and requests no longer count.
    clock.now += 10
    assert budget.allow(101) is True
    assert len(budget.seconds) == 1


def test_memory_is_one_entry_per_second_of_the_window():
    clock = FakeClock()
    budget = RetryBudget(50, window=10, clock=clock)
    for second in range(1000):
        clock.now = 1000.0 + second
        for request in range(5):
            budget.allow(second * 5 + request + 1)
    assert len(budget.seconds) <= 10


@pytest.mark.parametrize(
    ("method", "has_body", "expected"),
    [
        (b"GET", False, True),
        (b"HEAD", False, True),
        (b"OPTIONS", False, True),
        (b"TRACE", False, True),
        (b"PUT", False, True),
        (b"DELETE", False, True),
        (b"GET", True, False),
        (b"PUT", True, False),
        (b"POST", False, False),
        (b"PATCH", False, False),
        (b"get", False, False),
    ],
)
def test_what_a_502_or_503_may_retry(method, has_body, expected):
    assert retryable_answer(method, has_body) is expected
    assert len(IDEMPOTENT_METHODS) == 6


def route(algorithm: str, *backends: Backend) -> Route:
    group = ServerGroupRuntime(ServerGroup(id="sgp-web"), list(backends))
    return Route(group, algorithm)


@pytest.mark.parametrize(
    "algorithm",
    ["weighted_round_robin", "round_robin", "weighted_least_connections", "source_ip_hash"],
)
def test_each_retry_picks_a_server_not_tried_yet(algorithm):
    servers = [Backend(f"srv-{n}", "127.0.0.1", 8000 + n) for n in range(4)]
    web = route(algorithm, *servers)
    tried = [web.pick("198.51.100.7")]
    for _ in range(3):
        following = pick_untried(web, "198.51.100.7", tried)
        assert following is not None and following not in tried
        tried.append(following)
    assert set(tried) == set(servers)
    # Every server tried: nothing is left.
    assert pick_untried(web, "198.51.100.7", tried) is None


def test_unhealthy_and_zero_weight_servers_are_never_the_retry():
    first = Backend("srv-1", "127.0.0.1", 8001)
    down = Backend("srv-2", "127.0.0.1", 8002)
    down.healthy = False
    idle = Backend("srv-3", "127.0.0.1", 8003, weight=0)
    web = route("source_ip_hash", first, down, idle)
    assert pick_untried(web, "198.51.100.7", [first]) is None


def test_the_budget_outlives_a_listener_generation():
    stats = ListenerStats()
    snapshot = Snapshot(instance_id="lb-test0001", generation=1)
    pool = UpstreamPool()
    first = ListenerSettings(
        Listener(id="lsn-web", protocol="http", port=80, retries=2, retry_budget_percent=20),
        snapshot,
        group=None,
        tls=None,
        pool=pool,
        stats=stats,
    )
    second = ListenerSettings(
        Listener(id="lsn-web", protocol="http", port=80, retries=3, retry_budget_percent=50),
        snapshot,
        group=None,
        tls=None,
        pool=pool,
        stats=stats,
    )
    assert (first.retries, second.retries) == (2, 3)
    # One budget per listener and worker, whichever generation a request started on.
    assert first.retry_budget is second.retry_budget is stats.retry_budget
    assert stats.retry_budget.percent == 50
