"""Passive health checks (dataplane.outlier) with a fake clock and a fake timer: when a server
is ejected, for how long, when it returns, how the percentage holds ejections back, and how the
active checks and the ejection combine into the one flag every pick reads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dataplane.balancing import Backend, make_scheduler
from dataplane.config import PassiveHealthCheck
from dataplane.outlier import CONNECT, FIVE_XX, MIXED, OutlierDetector, passive_report


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeTimer:
    def __init__(self, due: float, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.due = due
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Timers:
    """call_later on the fake clock; `advance` moves the clock and fires what is due."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.pending: list[FakeTimer] = []

    def __call__(self, delay: float, callback: Callable[..., None], *args: Any) -> FakeTimer:
        timer = FakeTimer(self.clock.now + delay, callback, args)
        self.pending.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        due = [t for t in self.pending if t.due <= self.clock.now and not t.cancelled]
        self.pending = [t for t in self.pending if t not in due and not t.cancelled]
        for timer in sorted(due, key=lambda t: t.due):
            timer.callback(*timer.args)


def detector(
    backends: list[Backend], clock: FakeClock, timers: Timers, **config: Any
) -> OutlierDetector:
    values = {"enabled": True, "consecutive_failures": 3, "base_ejection_time": 10}
    values.update(config)
    return OutlierDetector(
        PassiveHealthCheck(**values),
        backends,
        clock=clock,
        wall_clock=lambda: clock.now + 1_700_000_000,
        call_later=timers,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def timers(clock: FakeClock) -> Timers:
    return Timers(clock)


def servers(count: int) -> list[Backend]:
    return [Backend(f"s{i}", "127.0.0.1", 8000 + i) for i in range(count)]


def test_consecutive_5xx_eject_and_a_success_resets_the_count(clock, timers):
    a, b = servers(2)
    outlier = detector([a, b], clock, timers)
    outlier.observe(a, 500)
    outlier.observe(a, 503)
    outlier.observe(a, 200)  # a success in between: the count starts again
    outlier.observe(a, 500)
    outlier.observe(a, 502)
    assert not a.ejected and a.healthy
    outlier.observe(a, 504)
    assert a.ejected and not a.healthy
    report = outlier.report(a)
    assert report["ejected"] is True
    assert report["ejection_reason"] == "passive: 3 consecutive 5xx"
    assert report["ejection_code"] == FIVE_XX
    assert report["ejections"] == 1
    assert report["ejection_seconds_left"] == 10.0
    assert report["ejected_until"] == pytest.approx(clock.now + 1_700_000_000 + 10)
    assert b.healthy and not b.ejected


def test_4xx_and_other_answers_are_successes(clock, timers):
    (a, b) = servers(2)
    outlier = detector([a, b], clock, timers)
    for status in (500, 500, 404, 500, 500, 301, 500, 500, 101):
        outlier.observe(a, status)
    assert not a.ejected


def test_connect_failures_eject_with_their_reason(clock, timers):
    a, b = servers(2)
    outlier = detector([a, b], clock, timers)
    for _ in range(3):
        outlier.connect_failed(a)
    assert a.ejected
    assert outlier.report(a)["ejection_reason"] == "passive: 3 consecutive connect failures"
    assert outlier.report(a)["ejection_code"] == CONNECT


def test_mixed_failures_say_both(clock, timers):
    a, b = servers(2)
    outlier = detector([a, b], clock, timers)
    outlier.connect_failed(a)
    outlier.observe(a, 500)
    outlier.observe(a, 500)
    assert (
        outlier.report(a)["ejection_reason"] == "passive: 3 consecutive failures (2 5xx, 1 connect)"
    )
    assert outlier.report(a)["ejection_code"] == MIXED


def test_a_tcp_connection_opened_resets_the_count(clock, timers):
    a, b = servers(2)
    outlier = detector([a, b], clock, timers)
    outlier.connect_failed(a)
    outlier.connect_failed(a)
    outlier.success(a)
    outlier.connect_failed(a)
    outlier.connect_failed(a)
    assert not a.ejected


def test_an_ejected_server_is_not_picked_and_returns_when_its_time_is_up(clock, timers):
    a, b = servers(2)
    scheduler = make_scheduler("round_robin", [a, b])
    outlier = detector([a, b], clock, timers)
    for _ in range(3):
        outlier.observe(a, 500)
    assert {scheduler.pick().id for _ in range(10)} == {"s1"}
    timers.advance(9.9)
    assert a.ejected
    timers.advance(0.2)
    assert not a.ejected and a.healthy
    assert {scheduler.pick().id for _ in range(10)} == {"s0", "s1"}
    assert outlier.report(a) == {"ejected": False, "ejections": 1}


def test_repeated_ejections_last_longer_up_to_the_maximum(clock, timers):
    a, b = servers(2)
    outlier = detector([a, b], clock, timers, max_ejection_time=25)
    lengths = []
    for _ in range(4):
        for _ in range(3):
            outlier.observe(a, 500)
        lengths.append(outlier.report(a)["ejection_seconds_left"])
        timers.advance(outlier.report(a)["ejection_seconds_left"])  # type: ignore[arg-type]
        assert not a.ejected
    # base x times ejected (as Envoy), capped at the maximum.
    assert lengths == [10.0, 20.0, 25.0, 25.0]


def test_the_multiplier_decays_while_the_server_stays_in(clock, timers):
    a, b = servers(2)
    outlier = detector([a, b], clock, timers, max_ejection_time=300)
    for _ in range(2):
        for _ in range(3):
            outlier.observe(a, 500)
        timers.advance(outlier.report(a)["ejection_seconds_left"])  # type: ignore[arg-type]
    # Ejected twice (10 s, 20 s); one base time back in service takes one step off.
    timers.advance(10)
    for _ in range(3):
        outlier.observe(a, 500)
    assert outlier.report(a)["ejection_seconds_left"] == 20.0
    timers.advance(20)
    # Long in service: back to the base time.
    timers.advance(1000)
    for _ in range(3):
        outlier.observe(a, 500)
    assert outlier.report(a)["ejection_seconds_left"] == 10.0


def test_max_ejection_percent_fails_open(clock, timers):
    group = servers(4)
    outlier = detector(group, clock, timers, max_ejection_percent=50)
    for server in group:
        for _ in range(3):
            outlier.observe(server, 500)
    # Half of four may be out; the other two keep serving though they fail.
    assert [s.ejected for s in group] == [True, True, False, False]
    assert outlier.ejected == 2
    # Their failures kept counting: once one returns, the next failure ejects at once.
    timers.advance(10)
    assert outlier.ejected == 0
    outlier.observe(group[2], 500)
    assert group[2].ejected


def test_the_percentage_is_strict(clock, timers):
    # 40% of two servers is less than one: nothing is ever ejected (documented choice: no
    # "at least one" as in Envoy, so a group is never left with fewer servers than it allows).
    pair = servers(2)
    outlier = detector(pair, clock, timers, max_ejection_percent=40)
    for _ in range(10):
        outlier.observe(pair[0], 500)
    assert not pair[0].ejected
    alone = servers(1)
    outlier = detector(alone, clock, timers, max_ejection_percent=99)
    for _ in range(10):
        outlier.observe(alone[0], 500)
    assert not alone[0].ejected
    outlier = detector(alone, clock, timers, max_ejection_percent=100)
    for _ in range(3):
        outlier.observe(alone[0], 500)
    assert alone[0].ejected


def test_the_percentage_counts_servers_in_service(clock, timers):
    group = servers(4)
    group[2].state = group[3].state = "maintenance"
    outlier = detector(group, clock, timers, max_ejection_percent=50)
    for server in group[:2]:
        for _ in range(3):
            outlier.observe(server, 500)
    assert [s.ejected for s in group[:2]] == [True, False]
    # A server out of service is not judged at all.
    for _ in range(3):
        outlier.observe(group[3], 500)
    assert not group[3].ejected


def test_active_and_passive_checks_combine(clock, timers):
    a, b = servers(2)
    outlier = detector([a, b], clock, timers)
    for _ in range(3):
        outlier.observe(a, 500)
    # An active check passing during the ejection does not bring it back early...
    a.checked_healthy = True
    a.healthy = a.checked_healthy and not a.ejected
    assert not a.healthy
    # ...and a server the active checks found down meanwhile stays out after it.
    a.checked_healthy = False
    timers.advance(10)
    assert not a.ejected and not a.healthy
    a.checked_healthy = True
    a.healthy = a.checked_healthy and not a.ejected
    assert a.healthy


def test_outcomes_of_other_generations_are_ignored(clock, timers):
    a, b = servers(2)
    stranger = Backend("s0", "127.0.0.1", 8000)
    outlier = detector([a, b], clock, timers)
    for _ in range(5):
        outlier.observe(stranger, 500)
        outlier.observe(None, 500)
    assert not stranger.ejected and not a.ejected


def test_adopt_keeps_an_ejection_and_its_time_of_return(clock, timers):
    a, b = servers(2)
    old = detector([a, b], clock, timers, max_ejection_percent=100)
    for _ in range(3):
        old.observe(a, 500)
    old.observe(b, 500)
    timers.advance(4)
    new_a, new_b = servers(2)
    new = detector([new_a, new_b], clock, timers, max_ejection_percent=100)
    new.adopt(old)
    old.stop()
    assert new_a.ejected and not new_a.healthy
    assert new.report(new_a)["ejection_seconds_left"] == 6.0
    new.observe(new_b, 500)
    new.observe(new_b, 500)
    assert new_b.ejected  # its first failure came before the reload
    timers.advance(6)
    assert not new_a.ejected and new_a.healthy
    # The old detector's timer was cancelled: it does not touch the old server again.
    assert a.ejected


def test_report_without_passive_checks():
    (a,) = servers(1)
    assert passive_report(a, None) == {}
