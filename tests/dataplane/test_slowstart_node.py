"""Slow start through a real node (seed 002): a server that joins a running group gets a linearly
growing share of requests. The node's clock is a fake one moved by hand; requests are real."""

from __future__ import annotations

import collections
import http.client

import pytest

from dataplane.node import Node
from tests.dataplane.conftest import (
    WAIT,
    NodeHandle,
    listener,
    server_group,
    snapshot,
)
from tests.fixtures.ports import free_port


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def node(loop_thread, clock):
    handle = NodeHandle.__new__(NodeHandle)
    handle.loop_thread = loop_thread
    handle.node = loop_thread.call(lambda: Node(clock=clock))
    yield handle
    loop_thread.run(handle.node.shutdown(0))


def shares(port: int, requests: int = 300) -> dict[bytes, float]:
    counts: collections.Counter[bytes] = collections.Counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        for _ in range(requests):
            connection.request("GET", "/")
            counts[connection.getresponse().read()] += 1
    finally:
        connection.close()
    return {name: count / requests for name, count in counts.items()}


@pytest.mark.parametrize("scheduler", ["weighted_round_robin", "weighted_least_connections"])
def test_a_joining_server_ramps_up_linearly(node, backends, clock, scheduler):
    a, b, c = backends("a"), backends("b"), backends("c")
    port = free_port()
    group = server_group(a, b)
    group.update(slow_start=True, slow_start_duration=100)
    node.apply(snapshot([listener(port, scheduler=scheduler)], [group]))
    # Servers present from the start are not ramped.
    assert shares(port, 100) == {b"a": 0.5, b"b": 0.5}

    grown = server_group(a, b, c)
    grown.update(slow_start=True, slow_start_duration=100)
    node.apply(snapshot([listener(port, scheduler=scheduler)], [grown], generation=2))
    # At the start of its ramp the new server gets (almost) nothing.
    assert shares(port).get(b"c", 0.0) < 0.02
    # Halfway: weight 50 against 100 + 100, a fifth of the requests.
    clock.now += 50
    assert shares(port)[b"c"] == pytest.approx(0.2, abs=0.03)
    # After the duration: a full third.
    clock.now += 50
    assert shares(port)[b"c"] == pytest.approx(1 / 3, abs=0.03)


def test_without_slow_start_a_joining_server_gets_its_share_at_once(node, backends):
    a, b = backends("a"), backends("b")
    port = free_port()
    node.apply(snapshot([listener(port)], [server_group(a)]))
    node.apply(snapshot([listener(port)], [server_group(a, b)], generation=2))
    assert shares(port, 100) == {b"a": 0.5, b"b": 0.5}
