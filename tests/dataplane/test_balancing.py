"""Scheduling algorithms: weights, smoothness, eligibility, consistency of source-IP hash."""

from collections import Counter
from itertools import groupby

import pytest

from dataplane.balancing import ALGORITHMS, Backend, make_scheduler


def backends(*weights: int) -> list[Backend]:
    return [
        Backend(f"srv-{i}", f"10.0.0.{i + 1}", 8080, weight) for i, weight in enumerate(weights)
    ]


def client_ips(count: int) -> list[str]:
    return [f"198.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}" for n in range(count)]


def pick_counts(algorithm: str, servers: list[Backend], picks: int) -> Counter[str]:
    scheduler = make_scheduler(algorithm, servers)
    ips = client_ips(picks)
    return Counter(scheduler.pick(ips[n]).id for n in range(picks))


def test_backend_starts_healthy_idle_and_eligible():
    backend = Backend("srv-1", "10.0.0.1", 80)

    assert backend.weight == 100
    assert backend.healthy is True
    assert backend.active == 0
    assert backend.last_check is None
    assert backend.eligible is True


def test_backend_with_weight_zero_or_unhealthy_is_not_eligible():
    idle, down = Backend("a", "10.0.0.1", 80, weight=0), Backend("b", "10.0.0.2", 80)
    down.healthy = False

    assert not idle.eligible
    assert not down.eligible


def test_unknown_algorithm_is_refused():
    with pytest.raises(ValueError, match="unknown scheduling algorithm 'random'"):
        make_scheduler("random", backends(100))


@pytest.mark.parametrize("algorithm", ["weighted_round_robin", "weighted_least_connections"])
def test_weight_three_to_one_gives_three_quarters_of_picks(algorithm):
    counts = pick_counts(algorithm, backends(75, 25), 400)

    assert abs(counts["srv-0"] / 400 - 0.75) <= 0.02
    assert counts["srv-0"] + counts["srv-1"] == 400


def test_source_ip_hash_shares_clients_by_weight():
    counts = pick_counts("source_ip_hash", backends(75, 25), 10_000)

    # A hash ring is statistical: the share tracks the weight within a few percent.
    assert 0.65 <= counts["srv-0"] / 10_000 <= 0.85


def test_weighted_round_robin_is_smooth():
    servers = backends(5, 1, 1)
    scheduler = make_scheduler("weighted_round_robin", servers)

    sequence = [scheduler.pick().id for _ in range(70)]

    # nginx's smooth WRR for 5:1:1 gives a a b a c a a per cycle; plain WRR would give a a a a a
    # b c, sending bursts of five requests to the heavy server.
    assert sequence[:7] == ["srv-0", "srv-0", "srv-1", "srv-0", "srv-2", "srv-0", "srv-0"]
    assert sequence == sequence[:7] * 10
    assert max(len(list(run)) for _, run in groupby(sequence[:7])) <= 2
    # Any seven consecutive picks, across cycle boundaries too, follow the weights exactly.
    for start in range(len(sequence) - 7):
        assert Counter(sequence[start : start + 7]) == {"srv-0": 5, "srv-1": 1, "srv-2": 1}


def test_round_robin_ignores_weights_but_skips_weight_zero():
    servers = backends(100, 1, 0, 50)
    scheduler = make_scheduler("round_robin", servers)

    sequence = [scheduler.pick().id for _ in range(9)]

    assert sequence == ["srv-0", "srv-1", "srv-3"] * 3


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_weight_zero_server_is_never_picked(algorithm):
    counts = pick_counts(algorithm, backends(100, 0, 100), 600)

    assert counts["srv-1"] == 0
    assert counts["srv-0"] > 0
    assert counts["srv-2"] > 0


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_unhealthy_server_is_skipped(algorithm):
    servers = backends(100, 100, 100)
    servers[0].healthy = False

    counts = pick_counts(algorithm, servers, 600)

    assert counts["srv-0"] == 0
    assert counts["srv-1"] + counts["srv-2"] == 600


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_no_eligible_server_gives_none(algorithm):
    servers = backends(100, 0)
    servers[0].healthy = False
    scheduler = make_scheduler(algorithm, servers)

    assert scheduler.pick("203.0.113.7") is None
    assert make_scheduler(algorithm, []).pick("203.0.113.7") is None


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_exclude_retries_on_another_server(algorithm):
    servers = backends(100, 100, 100)
    scheduler = make_scheduler(algorithm, servers)

    for ip in client_ips(50):
        first = scheduler.pick(ip)
        retry = scheduler.pick(ip, exclude=first)
        assert retry is not None
        assert retry is not first


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_exclude_of_the_only_server_gives_none(algorithm):
    servers = backends(100, 100)
    servers[1].healthy = False
    scheduler = make_scheduler(algorithm, servers)

    assert scheduler.pick("203.0.113.7", exclude=servers[0]) is None


def test_recovered_server_takes_traffic_again():
    servers = backends(100, 100)
    scheduler = make_scheduler("weighted_round_robin", servers)
    servers[1].healthy = False
    assert {scheduler.pick().id for _ in range(10)} == {"srv-0"}

    servers[1].healthy = True

    assert {scheduler.pick().id for _ in range(10)} == {"srv-0", "srv-1"}


def test_least_connections_prefers_lowest_active_per_weight():
    servers = backends(100, 50, 100)
    servers[0].active = 10  # 0.10 per weight unit
    servers[1].active = 4  # 0.08
    servers[2].active = 12  # 0.12
    scheduler = make_scheduler("weighted_least_connections", servers)

    assert scheduler.pick() is servers[1]


def test_least_connections_follows_the_load_as_connections_open():
    servers = backends(100, 100)
    scheduler = make_scheduler("weighted_least_connections", servers)

    # Connections that stay open: each pick goes where the fewest are.
    for _ in range(20):
        scheduler.pick().active += 1

    assert servers[0].active == servers[1].active == 10


def test_least_connections_uses_weight_when_busy():
    servers = backends(300, 100)
    scheduler = make_scheduler("weighted_least_connections", servers)

    for _ in range(40):
        scheduler.pick().active += 1

    assert (servers[0].active, servers[1].active) == (30, 10)


def test_source_ip_hash_is_stable_per_client():
    servers = backends(100, 100, 100, 100)
    scheduler = make_scheduler("source_ip_hash", servers)
    again = make_scheduler("source_ip_hash", backends(100, 100, 100, 100))

    for ip in client_ips(200):
        first = scheduler.pick(ip)
        assert all(scheduler.pick(ip) is first for _ in range(3))
        # Another node (or a restart) with the same servers agrees: the hash is not salted.
        assert again.pick(ip).id == first.id


def test_source_ip_hash_moves_about_one_fifth_when_a_fifth_server_joins():
    ips = client_ips(10_000)
    before = make_scheduler("source_ip_hash", backends(100, 100, 100, 100))
    after = make_scheduler("source_ip_hash", backends(100, 100, 100, 100, 100))

    moved = [ip for ip in ips if before.pick(ip).id != after.pick(ip).id]

    assert 0.10 <= len(moved) / len(ips) <= 0.30
    # Consistency: every client that moved went to the new server, none shuffled between old ones.
    assert {after.pick(ip).id for ip in moved} == {"srv-4"}


def test_source_ip_hash_moves_only_the_clients_of_a_failed_server():
    servers = backends(100, 100, 100, 100)
    scheduler = make_scheduler("source_ip_hash", servers)
    ips = client_ips(2_000)
    before = {ip: scheduler.pick(ip) for ip in ips}

    servers[2].healthy = False
    after = {ip: scheduler.pick(ip) for ip in ips}

    for ip in ips:
        if before[ip] is not servers[2]:
            assert after[ip] is before[ip]
        else:
            assert after[ip] is not servers[2]
    servers[2].healthy = True
    assert {ip: scheduler.pick(ip) for ip in ips} == before


def test_source_ip_hash_without_client_address_still_picks():
    servers = backends(100, 100)
    scheduler = make_scheduler("source_ip_hash", servers)

    assert {scheduler.pick(None).id for _ in range(4)} == {"srv-0", "srv-1"}
