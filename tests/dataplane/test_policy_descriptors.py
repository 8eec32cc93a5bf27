"""No descriptor left behind by issue 20's failure paths, through a real node: runs of retried
requests (503 answers and refused connects), of requests while a server is ejected and after it
returned, and of gRPC calls retried or cut by maintenance. Each test counts the descriptors of
this process (the node, its backends and the clients all run in it) once the run's steady state
is set up, and again once the run is over and its connections closed.

A throttled flood has the same check in test_throttle_node."""

from __future__ import annotations

import asyncio
import http.client
import os
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from tests.dataplane.conftest import (
    WAIT,
    LoopThread,
    RecordingBackend,
    Reply,
    get,
    listener,
    server_group,
    snapshot,
    wait_until,
)
from tests.dataplane.test_grpc import grpc_group
from tests.dataplane.test_grpc_policy import (  # noqa: F401 (fixtures)
    MAINTENANCE,
    OK,
    grpc_servers,
    node,
    with_states,
)
from tests.dataplane.test_passive_health_node import passive_group, serve, servers
from tests.fixtures.ports import free_port


class ClosingBackend(RecordingBackend):
    """A recording backend that closes its end of a connection the node closed. (The shared one
    leaves it in CLOSE-WAIT until garbage collection, a descriptor of the test's, not the node's.)
    """

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await super()._serve(reader, writer)
        finally:
            writer.close()


@pytest.fixture
def backends(loop_thread: LoopThread) -> Iterator[Callable[..., RecordingBackend]]:
    """The conftest factory, with ClosingBackend."""
    started: list[RecordingBackend] = []

    def start(name: str, handler: Callable[[Any], Reply] | None = None) -> RecordingBackend:
        backend = ClosingBackend(name, handler)
        loop_thread.run(backend.start())
        started.append(backend)
        return backend

    yield start
    for backend in started:
        loop_thread.run(backend.stop())


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def unavailable(_request: Any) -> Reply:
    return Reply(status=503, body=b"sick")


def failing(_request: Any) -> Reply:
    return Reply(status=500, body=b"broken")


def settled(before: int) -> bool:
    """Whether the descriptors are back to `before` (closing is asynchronous on both ends)."""
    return wait_until(lambda: open_fds() <= before)


def test_retried_requests_leave_no_descriptor_behind(dataplane, backends):
    sick, good = backends("sick", unavailable), backends("good")
    port = free_port()

    def run(group: dict[str, Any], generation: int) -> list[int]:
        """Apply `group` (round robin, one retry, a budget of one retry per request), then 30
        requests: 15 on new connections, 15 on one keep-alive connection."""
        listeners = [listener(port, scheduler="round_robin", retries=1, retry_budget_percent=100)]
        dataplane.apply(snapshot(listeners, [group], generation=generation))
        answers = [get(port)[0] for _ in range(15)]
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        for _ in range(15):
            connection.request("GET", "/")
            response = connection.getresponse()
            response.read()
            answers.append(response.status)
        connection.close()
        return answers

    # Warm: the pool keeps a connection to the good server, which `before` counts.
    dataplane.apply(snapshot([listener(port)], [server_group(good)]))
    assert get(port)[0] == 200
    before = open_fds()

    # Each request meets the sick server (503), then the closed port, first: round robin comes
    # back to it as the retry's pick moved on. Each is retried on the good server.
    closed = {"id": "srv-closed", "address": "127.0.0.1", "port": free_port(), "weight": 100}
    answered_503 = run(server_group(sick, good), 2)
    refused = run(dict(server_group(good), servers=[closed, *server_group(good)["servers"]]), 3)

    assert answered_503 == refused == [200] * 30
    assert len(sick.requests) == 30
    assert dataplane.stats("lsn-web")["retries"] == 60
    # Every retried 503 closed its backend connection rather than pool it; each refused connect
    # closed its socket.
    assert settled(before), (open_fds(), before)


def test_requests_around_an_ejection_leave_no_descriptor_behind(dataplane, backends):
    good, bad = backends("good"), backends("bad", failing)
    port = serve(dataplane, passive_group(good, bad, consecutive_failures=3, base_ejection_time=1))
    # Warm: one request to each server, whose pooled connections `before` counts.
    assert [get(port)[0] for _ in range(2)] == [200, 500]
    before = open_fds()

    statuses = [get(port)[0] for _ in range(20)]
    assert statuses.count(500) == 2  # three in a row with the warm one: ejected
    assert servers(dataplane)["srv-bad-1"]["ejected"] is True
    assert wait_until(lambda: servers(dataplane)["srv-bad-1"]["ejected"] is False)
    statuses = [get(port)[0] for _ in range(6)]
    assert statuses.count(500) == 3  # back, failing again: out again

    assert settled(before), (open_fds(), before)


@pytest.mark.parametrize("cut", [False, True], ids=["retried", "cut_by_maintenance"])
def test_grpc_calls_retried_or_cut_leave_no_descriptor_behind(node, grpc_servers, cut):  # noqa: F811
    up, slow = grpc_servers("up"), grpc_servers("slow")
    group = grpc_group(up, slow, ports=[free_port(), up.port, slow.port])
    node.apply(with_states(group, {}, {}, {"weight": 0}), retries=1, retry_budget_percent=100)
    assert node.say(1) == [(OK, b"up: x")]
    before = open_fds()

    assert node.say(20) == [(OK, b"up: x")] * 20
    assert node.counters()["retries"] >= 10
    if cut:
        # A stream on the third server alone, which then goes into maintenance: cut at once.
        node.apply(with_states(group, {}, {"weight": 0}, {"weight": 100}))
        stream = node.hold()
        assert next(stream) == b"first"
        node.apply(with_states(group, {}, {"weight": 0}, MAINTENANCE))
        with pytest.raises(grpc.RpcError):
            list(stream)
        assert slow.holds == 1

    assert settled(before), (open_fds(), before)
