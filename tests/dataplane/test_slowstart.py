"""Slow start (seed 002) with a fake clock: linear ramp of a joining or recovering server."""

from collections import Counter

import pytest

from dataplane.balancing import Backend, make_scheduler
from dataplane.slowstart import MAX_DURATION, MIN_DURATION, WEIGHT_SCALE, SlowStart

WEIGHTED = ["weighted_round_robin", "weighted_least_connections"]
DURATION = 100


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def slow_start(clock) -> SlowStart:
    return SlowStart(DURATION, clock=clock)


def servers(*weights: int) -> list[Backend]:
    return [Backend(f"srv-{i}", f"10.0.0.{i + 1}", 8080, w) for i, w in enumerate(weights)]


def counts(scheduler, picks: int) -> Counter[str]:
    return Counter(scheduler.pick(f"192.0.2.{n % 250}").id for n in range(picks))


# -- duration -------------------------------------------------------------------------------------


@pytest.mark.parametrize("duration", [MIN_DURATION, 30, 600, MAX_DURATION])
def test_duration_within_30_to_1200_seconds_is_accepted(duration):
    assert SlowStart(duration).duration == duration


@pytest.mark.parametrize("duration", [0, 29, 1201, -30])
def test_duration_outside_30_to_1200_seconds_is_refused(duration):
    with pytest.raises(ValueError, match="out of range 30-1200"):
        SlowStart(duration)


def test_default_duration_is_30_seconds():
    assert SlowStart().duration == 30


# -- the ramp -------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", WEIGHTED)
@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75])
def test_joining_server_gets_a_linear_share_of_its_weight(algorithm, clock, slow_start, fraction):
    group = servers(100, 100)
    scheduler = make_scheduler(algorithm, group, slow_start=slow_start)
    slow_start.begin(group[1])

    clock.advance(DURATION * fraction)
    picks = counts(scheduler, 1000)

    # srv-1 counts with fraction x its weight: picks of srv-1 / picks of srv-0 == fraction.
    assert picks["srv-1"] / picks["srv-0"] == pytest.approx(fraction, abs=0.01)
    assert slow_start.fraction(group[1], clock.now) == pytest.approx(fraction)


@pytest.mark.parametrize("algorithm", WEIGHTED)
def test_at_the_start_of_the_ramp_the_server_gets_next_to_nothing(algorithm, clock, slow_start):
    group = servers(100, 100)
    scheduler = make_scheduler(algorithm, group, slow_start=slow_start)
    slow_start.begin(group[1])

    picks = counts(scheduler, 1000)

    assert picks["srv-1"] <= 1
    assert picks["srv-0"] >= 999


@pytest.mark.parametrize("algorithm", WEIGHTED)
def test_after_the_duration_the_server_gets_its_full_share_and_leaves_slow_start(
    algorithm, clock, slow_start
):
    group = servers(100, 100)
    scheduler = make_scheduler(algorithm, group, slow_start=slow_start)
    slow_start.begin(group[1])

    clock.advance(DURATION)
    picks = counts(scheduler, 1000)

    assert picks == {"srv-0": 500, "srv-1": 500}
    assert group[1].ramp_started is None


@pytest.mark.parametrize("algorithm", WEIGHTED)
def test_share_grows_step_by_step_through_the_ramp(algorithm, clock, slow_start):
    group = servers(100, 100)
    scheduler = make_scheduler(algorithm, group, slow_start=slow_start)
    slow_start.begin(group[1])
    shares = []

    for _ in range(10):
        clock.advance(DURATION / 10)
        picks = counts(scheduler, 400)
        shares.append(picks["srv-1"] / 400)

    assert shares == sorted(shares)
    assert shares[0] == pytest.approx(0.1 / 1.1, abs=0.01)
    assert shares[-1] == pytest.approx(0.5, abs=0.01)


def test_ramp_respects_the_configured_weights(clock, slow_start):
    group = servers(100, 50)
    scheduler = make_scheduler("weighted_round_robin", group, slow_start=slow_start)
    slow_start.begin(group[1])

    clock.advance(DURATION / 2)
    picks = counts(scheduler, 1250)

    # Effective weights 100 : 25.
    assert picks == {"srv-0": 1000, "srv-1": 250}


def test_lone_server_in_slow_start_still_takes_all_traffic(clock, slow_start):
    group = servers(100)
    scheduler = make_scheduler("weighted_round_robin", group, slow_start=slow_start)
    slow_start.begin(group[0])

    assert counts(scheduler, 10) == {"srv-0": 10}


def test_weight_zero_server_stays_out_during_slow_start(clock, slow_start):
    group = servers(100, 0)
    scheduler = make_scheduler("weighted_least_connections", group, slow_start=slow_start)
    slow_start.begin(group[1])
    clock.advance(DURATION / 2)

    assert counts(scheduler, 100) == {"srv-0": 100}
    assert slow_start.weight(group[1], clock.now) == 0


def test_weighted_least_connections_ramps_under_concurrent_load(clock, slow_start):
    group = servers(100, 100)
    scheduler = make_scheduler("weighted_least_connections", group, slow_start=slow_start)
    slow_start.begin(group[1])
    clock.advance(DURATION / 4)

    # Requests that stay open: each pick adds one active request to the chosen server.
    for _ in range(500):
        scheduler.pick().active += 1

    # Least connections keeps active/effective-weight level: about 4 : 1.
    assert group[1].active / group[0].active == pytest.approx(0.25, abs=0.02)


def test_servers_present_at_start_are_not_in_slow_start(clock, slow_start):
    group = servers(100, 100)
    scheduler = make_scheduler("weighted_round_robin", group, slow_start=slow_start)

    assert counts(scheduler, 100) == {"srv-0": 50, "srv-1": 50}
    assert slow_start.weight(group[0], clock.now) == 100 * WEIGHT_SCALE


# -- recovery -------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", WEIGHTED)
def test_recovery_noticed_by_the_scheduler_starts_a_ramp(algorithm, clock, slow_start):
    group = servers(100, 100)
    scheduler = make_scheduler(algorithm, group, slow_start=slow_start)
    group[1].healthy = False
    assert counts(scheduler, 10) == {"srv-0": 10}
    clock.advance(3600)

    group[1].healthy = True
    at_recovery = counts(scheduler, 1000)
    clock.advance(DURATION / 2)
    half_way = counts(scheduler, 1000)

    assert at_recovery["srv-1"] <= 1
    assert half_way["srv-1"] / half_way["srv-0"] == pytest.approx(0.5, abs=0.01)


def test_recovery_reported_by_the_health_checker_starts_the_ramp_then(clock, slow_start):
    group = servers(100, 100)
    scheduler = make_scheduler("weighted_round_robin", group, slow_start=slow_start)
    # Down and up again between two picks: only the health checker's hook sees it.
    group[1].healthy = False
    slow_start.on_health_change(group[1])
    clock.advance(60)
    group[1].healthy = True
    slow_start.on_health_change(group[1])

    clock.advance(DURATION / 4)
    picks = counts(scheduler, 1000)

    assert picks["srv-1"] / picks["srv-0"] == pytest.approx(0.25, abs=0.01)


def test_recovery_restarts_a_ramp_that_was_under_way(clock, slow_start):
    group = servers(100, 100)
    scheduler = make_scheduler("weighted_round_robin", group, slow_start=slow_start)
    slow_start.begin(group[1])
    clock.advance(DURATION * 0.75)
    counts(scheduler, 10)

    group[1].healthy = False
    counts(scheduler, 10)
    clock.advance(5)
    group[1].healthy = True
    picks = counts(scheduler, 1000)

    assert picks["srv-1"] <= 1
    assert slow_start.fraction(group[1], clock.now) == 0.0


def test_ramp_state_is_shared_by_every_listener_of_the_group(clock, slow_start):
    group = servers(100, 100)
    first = make_scheduler("weighted_round_robin", group, slow_start=slow_start)
    second = make_scheduler("weighted_least_connections", group, slow_start=slow_start)
    group[1].healthy = False
    counts(first, 4)
    counts(second, 4)
    group[1].healthy = True

    counts(first, 4)  # the first listener notices the recovery and starts the ramp
    clock.advance(DURATION / 2)
    picks = counts(second, 1000)

    # The second listener does not restart the ramp when it looks later.
    assert picks["srv-1"] / picks["srv-0"] == pytest.approx(0.5, abs=0.01)


def test_adopt_state_carries_a_ramp_into_the_next_snapshot(clock, slow_start):
    before = servers(100, 100)
    slow_start.begin(before[1])
    clock.advance(DURATION / 2)

    after = servers(100, 100)
    for new, old in zip(after, before, strict=True):
        new.adopt_state(old)
    picks = counts(make_scheduler("weighted_round_robin", after, slow_start=slow_start), 1500)

    assert picks == {"srv-0": 1000, "srv-1": 500}


# -- slow start off, and schedulers that ignore it -------------------------------------------------


@pytest.mark.parametrize("algorithm", WEIGHTED)
def test_without_slow_start_a_recovered_server_gets_its_full_share_at_once(algorithm):
    group = servers(100, 100)
    scheduler = make_scheduler(algorithm, group)
    group[1].healthy = False
    counts(scheduler, 10)

    group[1].healthy = True

    assert counts(scheduler, 100) == {"srv-0": 50, "srv-1": 50}
    assert group[1].ramp_started is None


@pytest.mark.parametrize("algorithm", ["round_robin", "source_ip_hash"])
def test_unweighted_and_hash_schedulers_ignore_slow_start(algorithm, clock, slow_start):
    group = servers(100, 100)
    with_ramp = make_scheduler(algorithm, group, slow_start=slow_start)
    without = make_scheduler(algorithm, servers(100, 100))
    slow_start.begin(group[1])

    assert counts(with_ramp, 200) == counts(without, 200)
