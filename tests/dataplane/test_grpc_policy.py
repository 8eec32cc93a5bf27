"""Issue 20's traffic policy for gRPC server groups, through a real node: real grpcio servers
behind an HTTPS listener with HTTP/2, real grpcio clients in front of it.

- Retries: a call whose connect fails goes to a server not tried yet, within the listener's
  `retries` and its retry budget; a call a server answered is never sent again.
- Passive health checks: a server answering UNAVAILABLE (or refusing connections) is ejected
  after its consecutive failures and returns after its time; an application status such as
  NOT_FOUND is not a failure.
- Server states: a draining server takes no new call while a long streaming call on it
  completes; at its drain deadline, or at once in maintenance, what remains on it is cut.

Ejection times and drain deadlines are the shortest the schema allows (1-2 s); the tests that wait
for them bound the wait with generous slack, as the time is the feature under test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from dataplane.retry import MIN_RETRIES_PER_SECOND
from tests.dataplane.conftest import WAIT, certificate_entry, snapshot, wait_until
from tests.dataplane.test_grpc import SERVICE, EchoServer, grpc_group
from tests.dataplane.test_https import https_listener
from tests.dataplane.test_server_states import MAINTENANCE, draining, with_states
from tests.fixtures.ports import free_port

PASSIVE = {
    "enabled": True,
    "consecutive_failures": 3,
    "base_ejection_time": 1,
    "max_ejection_time": 120,
    "max_ejection_percent": 50,
}
LISTENER = "lsn-tls"


class PolicyServer(EchoServer):
    """An echo server whose Say answers as `mode` says ("ok", "unavailable" or "not_found"), and
    whose Hold streams one message, then the rest once the test releases it."""

    def __init__(self, name: str) -> None:
        # EchoServer's fields, with handlers of its own (a started server takes no more).
        self.name = name
        self.metadata: list[dict[str, str]] = []
        self.mode = "ok"
        self.release = threading.Event()
        self.holds = 0
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handlers = {
            "Say": grpc.unary_unary_rpc_method_handler(self.say),
            "Hold": grpc.unary_stream_rpc_method_handler(self.hold),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def say(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.metadata.append(dict(context.invocation_metadata()))
        if self.mode == "unavailable":
            context.abort(grpc.StatusCode.UNAVAILABLE, "sick server says no")
        if self.mode == "not_found":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        return self.name.encode() + b": " + request

    def hold(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self.holds += 1
        yield b"first"
        # Held until the test says, or until the client is gone (a cut call); 30 s at most.
        deadline = time.monotonic() + 30
        while not self.release.wait(0.05):
            if not context.is_active() or time.monotonic() > deadline:
                return
        for n in range(3):
            yield b"more %d" % n


@pytest.fixture
def grpc_servers() -> Iterator[Any]:
    started: list[PolicyServer] = []

    def start(name: str) -> PolicyServer:
        server = PolicyServer(name)
        started.append(server)
        return server

    yield start
    for server in started:
        server.release.set()
        server.stop()


class GrpcNode:
    """One HTTPS listener with HTTP/2 on the test node, its gRPC group, and a channel to it."""

    def __init__(self, dataplane: Any, ca: Any) -> None:
        self.dataplane = dataplane
        self.ca = ca
        self.port = free_port()
        self.generation = 0
        self.channel: grpc.Channel | None = None
        self.settings: dict[str, Any] = {}

    def apply(self, group: dict[str, Any], **settings: Any) -> None:
        self.generation += 1
        self.settings = settings or self.settings
        certificates = [certificate_entry("cert-default", self.ca.issue_cert("grpc.example.com"))]
        listener = https_listener(self.port, http2=True, scheduler="round_robin", **self.settings)
        result = self.dataplane.apply(
            snapshot([listener], [group], certificates=certificates, generation=self.generation)
        )
        assert result[LISTENER]["status"] == "running", result
        if self.channel is None:
            credentials = grpc.ssl_channel_credentials(root_certificates=self.ca.cert_pem.bytes())
            self.channel = grpc.secure_channel(
                f"127.0.0.1:{self.port}",
                credentials,
                options=[("grpc.ssl_target_name_override", "grpc.example.com")],
            )

    def say(self, count: int) -> list[tuple[grpc.StatusCode, bytes]]:
        """`count` unary calls one after another: (status, reply) of each."""
        call = self.channel.unary_unary(f"/{SERVICE}/Say")  # type: ignore[union-attr]
        outcomes = []
        for _ in range(count):
            try:
                outcomes.append((grpc.StatusCode.OK, call(b"x", timeout=WAIT)))
            except grpc.RpcError as error:
                outcomes.append((error.code(), b""))
        return outcomes

    def hold(self) -> Any:
        return self.channel.unary_stream(f"/{SERVICE}/Hold")(b"", timeout=60)  # type: ignore[union-attr]

    def counters(self) -> dict[str, Any]:
        return self.dataplane.stats(LISTENER)

    def servers(self) -> dict[str, dict[str, Any]]:
        entries = self.dataplane.status()["listeners"][LISTENER]["backends"]
        return {entry["id"]: entry for entry in entries}

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()


@pytest.fixture
def node(dataplane: Any, ca: Any) -> Iterator[GrpcNode]:
    handle = GrpcNode(dataplane, ca)
    yield handle
    handle.close()


def passive_grpc_group(*servers: PolicyServer, ports: list[int] | None = None, **passive: Any):
    group = grpc_group(*servers, ports=ports)
    group["passive_health_check"] = {**PASSIVE, **passive}
    return group


def codes(outcomes: list[tuple[grpc.StatusCode, bytes]]) -> list[grpc.StatusCode]:
    return [code for code, _ in outcomes]


OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


# -- retries ---------------------------------------------------------------------------------------


def test_a_call_whose_connect_fails_is_retried_on_the_healthy_server(node, grpc_servers):
    up = grpc_servers("up")
    # A budget of 100%: every call may be retried once (the budget has a test of its own).
    node.apply(grpc_group(up, ports=[free_port(), up.port]), retries=1, retry_budget_percent=100)

    outcomes = node.say(10)

    assert outcomes == [(OK, b"up: x")] * 10
    assert len(up.metadata) == 10
    counters = node.counters()
    # Round robin comes back to the closed port for each call (the retry's pick moved it on).
    assert counters["retries"] >= 5
    assert counters["retries_refused"] == 0
    assert node.servers()["srv-0"]["connect_failures"] == counters["retries"]


def test_retries_zero_leaves_a_failed_connect_to_the_client(node, grpc_servers):
    up = grpc_servers("up")
    node.apply(grpc_group(up, ports=[free_port(), up.port]), retries=0)

    outcomes = node.say(10)

    # Round robin: every other call went to the closed port and failed there.
    assert codes(outcomes).count(UNAVAILABLE) == 5
    assert codes(outcomes).count(OK) == 5 == len(up.metadata)
    assert node.counters()["retries"] == 0


def test_a_call_the_server_answered_unavailable_is_not_sent_again(node, grpc_servers):
    sick, good = grpc_servers("sick"), grpc_servers("good")
    sick.mode = "unavailable"
    node.apply(grpc_group(sick, good), retries=3)

    outcomes = node.say(4)

    # A gRPC call is a POST whose messages are not kept: the server's answer reaches the client.
    assert codes(outcomes) == [UNAVAILABLE, OK, UNAVAILABLE, OK]
    assert len(sick.metadata) == 2 and len(good.metadata) == 2
    assert node.counters()["retries"] == 0


def test_the_budget_stops_a_grpc_retry_storm(node, grpc_servers):
    dead = [free_port() for _ in range(4)]
    node.apply(grpc_group(ports=dead), retries=3, retry_budget_percent=1)
    calls = 100

    started = time.monotonic()
    outcomes = node.say(calls)
    elapsed = time.monotonic() - started

    assert codes(outcomes) == [UNAVAILABLE] * calls
    counters = node.counters()
    # Without the budget: 3 retries per call, 300. With it: 1% of the calls plus the floor for
    # each second the storm touched (time only bounds the floor's share).
    seconds_touched = int(elapsed) + 2
    assert 0 < counters["retries"] <= calls // 100 + MIN_RETRIES_PER_SECOND * seconds_touched + 1
    assert counters["retries_refused"] > 0
    connect_failures = sum(entry["connect_failures"] for entry in node.servers().values())
    assert connect_failures == calls + counters["retries"]


# -- passive health checks -------------------------------------------------------------------------


def test_a_server_answering_unavailable_is_ejected_and_returns_after_its_time(node, grpc_servers):
    sick, good = grpc_servers("sick"), grpc_servers("good")
    sick.mode = "unavailable"
    node.apply(passive_grpc_group(sick, good))

    # Round robin: three UNAVAILABLE from the sick server, then it is out.
    assert codes(node.say(6)) == [UNAVAILABLE, OK] * 3
    entry = node.servers()["srv-0"]
    assert entry["ejected"] is True and entry["healthy"] is False
    assert entry["ejection_reason"] == "passive: 3 consecutive 5xx"
    assert 0 < entry["ejection_seconds_left"] <= 1.0

    # Ejected: the other server takes every call.
    assert codes(node.say(8)) == [OK] * 8
    assert len(sick.metadata) == 3

    # Well again, it returns after its second and takes its share.
    sick.mode = "ok"
    assert wait_until(lambda: node.servers()["srv-0"]["ejected"] is False, timeout=WAIT)
    served = [reply.split(b":")[0] for _, reply in node.say(4)]
    assert sorted(served) == [b"good", b"good", b"sick", b"sick"]


def test_an_application_status_is_not_a_failure(node, grpc_servers):
    picky, good = grpc_servers("picky"), grpc_servers("good")
    picky.mode = "not_found"
    node.apply(passive_grpc_group(picky, good))

    outcomes = node.say(12)

    assert codes(outcomes) == [grpc.StatusCode.NOT_FOUND, OK] * 6
    assert len(picky.metadata) == 6
    assert node.servers()["srv-0"]["ejected"] is False


def test_refused_connects_eject_the_server_and_its_calls_are_retried_meanwhile(node, grpc_servers):
    up = grpc_servers("up")
    node.apply(passive_grpc_group(up, ports=[free_port(), up.port], base_ejection_time=60))

    outcomes = node.say(12)

    # Every call lands on the healthy server: a retry while the closed port counts its failures,
    # then no retry at all once it is ejected.
    assert outcomes == [(OK, b"up: x")] * 12
    assert node.counters()["retries"] == 3
    entry = node.servers()["srv-0"]
    assert entry["ejected"] is True
    assert entry["ejection_reason"] == "passive: 3 consecutive connect failures"
    assert entry["connect_failures"] == 3


# -- server states ---------------------------------------------------------------------------------


def test_a_draining_server_takes_no_new_call_while_its_long_stream_completes(node, grpc_servers):
    slow, other = grpc_servers("slow"), grpc_servers("other")
    group = grpc_group(slow, other)
    node.apply(with_states(group, {}, {"weight": 0}))
    # Given a streaming call under way on the only server with a weight...
    stream = node.hold()
    assert next(stream) == b"first"

    # ...when it drains (an hour to go) and the other server takes the traffic,
    node.apply(with_states(group, draining(3600), {}))
    # then every new call goes to the other server,
    assert node.say(6) == [(OK, b"other: x")] * 6
    assert len(slow.metadata) == 0
    assert node.servers()["srv-0"]["state"] == "draining"
    # and the stream on the draining server completes, every message of it.
    slow.release.set()
    assert list(stream) == [b"more 0", b"more 1", b"more 2"]
    assert stream.code() == OK
    assert slow.holds == 1


def test_a_stream_on_a_draining_server_is_cut_at_its_deadline(node, grpc_servers):
    slow, other = grpc_servers("slow"), grpc_servers("other")
    group = grpc_group(slow, other)
    node.apply(with_states(group, {}, {"weight": 0}))
    stream = node.hold()
    assert next(stream) == b"first"

    applied = time.monotonic()
    node.apply(with_states(group, draining(2), {}))
    with pytest.raises(grpc.RpcError) as error:
        list(stream)
    waited = time.monotonic() - applied

    # Cut at the deadline (a whole second of the two at least, as it is rounded to the second),
    # long before the server would have let the call go (30 s).
    assert 1.0 <= waited < 15
    assert error.value.code() in (grpc.StatusCode.INTERNAL, UNAVAILABLE)
    assert node.say(2) == [(OK, b"other: x")] * 2
    assert slow.holds == 1


def test_maintenance_cuts_a_stream_at_once(node, grpc_servers):
    slow, other = grpc_servers("slow"), grpc_servers("other")
    group = grpc_group(slow, other)
    node.apply(with_states(group, {}, {"weight": 0}))
    stream = node.hold()
    assert next(stream) == b"first"

    applied = time.monotonic()
    node.apply(with_states(group, MAINTENANCE, {}))
    with pytest.raises(grpc.RpcError):
        list(stream)

    # At once: well before the server would have let the call go (30 s).
    assert time.monotonic() - applied < 15
    assert node.say(3) == [(OK, b"other: x")] * 3
    assert slow.holds == 1
