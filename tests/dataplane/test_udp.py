"""UDP listeners: sessions per client address, scheduling, idle expiry, ACL and UDP health checks.

Everything runs against real UDP echo servers and real client sockets on loopback. Clients that
need their own address bind to 127.0.0.x (Linux routes all of 127/8 to loopback). Only the session
clock is faked, for idle expiry.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

import pytest
import pytest_asyncio
import uvloop

from dataplane.acl import AccessControl
from dataplane.balancing import Backend, make_scheduler
from dataplane.config import AccessControl as AclSetting
from dataplane.config import Acl, Listener, Snapshot
from dataplane.health import HealthChecker
from dataplane.protocols.udp import UdpListener, UdpSettings, bind_udp, start_udp_listener
from dataplane.stats import ListenerStats
from dataplane.udp_health import UdpHealthCheckSpec, udp_probe
from tests.fixtures.ports import free_udp_port as closed_udp_port

# Every wait in this file is bounded by this, so a broken proxy fails instead of hanging.
WAIT = 5.0


class EchoServer(asyncio.DatagramProtocol):
    """Answers each datagram with b"<name>:<data>" and records who sent what."""

    def __init__(self, name: str, *, silent: bool = False) -> None:
        self.name = name
        self.silent = silent
        self.received: list[tuple[tuple, bytes]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.received.append((addr, data))
        if not self.silent:
            self.transport.sendto(self.name.encode() + b":" + data, addr)  # type: ignore[union-attr]

    @property
    def port(self) -> int:
        return self.transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]

    def sources(self) -> set[tuple]:
        return {addr for addr, _ in self.received}


class Client(asyncio.DatagramProtocol):
    """A UDP client of the listener, from its own address and port."""

    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.replies.put_nowait(data)

    @property
    def address(self) -> tuple:
        return self.transport.get_extra_info("sockname")  # type: ignore[union-attr]

    def send(self, data: bytes) -> None:
        self.transport.sendto(data)  # type: ignore[union-attr]

    async def ask(self, data: bytes) -> bytes:
        self.send(data)
        return await asyncio.wait_for(self.replies.get(), WAIT)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def wait_for(predicate, timeout: float = WAIT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


class Harness:
    """Starts echo servers, listeners and clients, and closes them all at the end."""

    def __init__(self) -> None:
        self.closers: list = []
        self.stats = ListenerStats()

    async def echo(self, name: str, *, silent: bool = False) -> EchoServer:
        loop = asyncio.get_running_loop()
        transport, server = await loop.create_datagram_endpoint(
            lambda: EchoServer(name, silent=silent), local_addr=("127.0.0.1", 0)
        )
        self.closers.append(transport.close)
        return server

    def settings(
        self,
        *servers: EchoServer | Backend | tuple[EchoServer, int],
        algorithm: str = "round_robin",
        **options,
    ) -> UdpSettings:
        backends = []
        for item in servers:
            if isinstance(item, Backend):
                backends.append(item)
                continue
            server, weight = item if isinstance(item, tuple) else (item, 100)
            backends.append(Backend(server.name, "127.0.0.1", server.port, weight))
        return UdpSettings(
            listener_id="lsn-udp",
            scheduler=make_scheduler(algorithm, backends),
            stats=self.stats,
            **options,
        )

    async def listener(self, settings: UdpSettings, *, clock=None) -> tuple[UdpListener, int]:
        sock = bind_udp("127.0.0.1", 0)
        port = sock.getsockname()[1]
        listener = await start_udp_listener(sock, settings, clock=clock)
        self.closers.append(listener.close)
        return listener, port

    async def client(self, port: int, *, source: str = "127.0.0.1") -> Client:
        loop = asyncio.get_running_loop()
        transport, client = await loop.create_datagram_endpoint(
            Client, local_addr=(source, 0), remote_addr=("127.0.0.1", port)
        )
        self.closers.append(transport.close)
        return client

    def close(self) -> None:
        for close in reversed(self.closers):
            close()


@pytest_asyncio.fixture
async def udp():
    harness = Harness()
    yield harness
    harness.close()


# -- sessions and scheduling -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_each_client_keeps_its_backend_and_gets_its_own_replies(udp):
    a, b = await udp.echo("a"), await udp.echo("b")
    listener, port = await udp.listener(udp.settings(a, b))
    first, second = await udp.client(port), await udp.client(port)

    first_replies = [await first.ask(b"one-%d" % n) for n in range(3)]
    second_replies = [await second.ask(b"two-%d" % n) for n in range(3)]

    # Round robin places each new client; every later datagram of a client follows its session.
    assert first_replies == [b"a:one-0", b"a:one-1", b"a:one-2"]
    assert second_replies == [b"b:two-0", b"b:two-1", b"b:two-2"]
    # One upstream socket per session: a backend sees each client from one source port.
    assert len(a.sources()) == 1
    assert len(b.sources()) == 1
    assert listener.session_backends() == {first.address: "a", second.address: "b"}
    assert udp.stats.total_connections == 2
    assert udp.stats.active_connections == 2


@pytest.mark.asyncio
async def test_sessions_follow_the_weights(udp):
    heavy, light, idle = await udp.echo("heavy"), await udp.echo("light"), await udp.echo("idle")
    listener, port = await udp.listener(
        udp.settings((heavy, 30), (light, 10), (idle, 0), algorithm="weighted_round_robin")
    )
    clients = [await udp.client(port) for _ in range(8)]

    answers = [await client.ask(b"hi") for client in clients]

    served = collections.Counter(answer.split(b":")[0] for answer in answers)
    assert served == {b"heavy": 6, b"light": 2}
    assert idle.received == []
    assert len(listener.sessions) == 8


@pytest.mark.asyncio
async def test_source_ip_hash_keeps_all_ports_of_a_client_on_one_backend(udp):
    servers = [await udp.echo(name) for name in ("a", "b", "c")]
    listener, port = await udp.listener(udp.settings(*servers, algorithm="source_ip_hash"))
    clients = [await udp.client(port) for _ in range(5)]

    answers = {(await client.ask(b"x")).split(b":")[0] for client in clients}

    assert len(answers) == 1
    assert len(listener.sessions) == 5


@pytest.mark.asyncio
async def test_counters_count_datagrams_and_bytes_both_ways(udp):
    a = await udp.echo("a")
    listener, port = await udp.listener(udp.settings(a))
    client = await udp.client(port)

    for payload in (b"12345", b"abc"):
        await client.ask(payload)

    assert udp.stats.bytes_in == 8
    assert udp.stats.bytes_out == len(b"a:12345") + len(b"a:abc")
    assert udp.stats.requests == 2
    assert listener.counters() == {
        "sessions": 1,
        "datagrams_in": 2,
        "datagrams_out": 2,
        "dropped": 0,
        "evicted": 0,
        "throttled": 0,
    }


@pytest.mark.asyncio
async def test_no_eligible_backend_drops_the_datagram(udp):
    a = await udp.echo("a")
    listener, port = await udp.listener(udp.settings((a, 0)))
    client = await udp.client(port)

    client.send(b"lost")
    await wait_for(lambda: listener.dropped == 1)

    assert listener.sessions == {}
    assert a.received == []


# -- idle expiry and table size --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_an_idle_session_expires_and_the_next_datagram_opens_a_new_one(udp):
    clock = FakeClock()
    a = await udp.echo("a")
    backend = Backend("a", "127.0.0.1", a.port)
    listener, port = await udp.listener(udp.settings(backend, idle_timeout=30.0), clock=clock)
    client = await udp.client(port)
    await client.ask(b"first")

    clock.now += 29.0
    assert listener.sweep() == 0
    await client.ask(b"still alive")
    clock.now += 29.0
    assert listener.sweep() == 0
    clock.now += 1.5
    assert listener.sweep() == 1

    assert listener.sessions == {}
    assert backend.active == 0
    assert udp.stats.active_connections == 0
    assert await client.ask(b"again") == b"a:again"
    assert udp.stats.total_connections == 2
    # The new session has a new upstream socket, so the backend sees a second source port.
    assert len(a.sources()) == 2


@pytest.mark.asyncio
async def test_replies_keep_a_session_alive(udp):
    clock = FakeClock()
    a = await udp.echo("a")
    listener, port = await udp.listener(udp.settings(a, idle_timeout=10.0), clock=clock)
    client = await udp.client(port)
    await client.ask(b"ping")

    clock.now += 8.0
    # A reply arrives with no datagram from the client: the backend kept the session busy.
    a.transport.sendto(b"push", next(iter(a.sources())))
    assert await asyncio.wait_for(client.replies.get(), WAIT) == b"push"
    clock.now += 8.0

    assert listener.sweep() == 0
    assert len(listener.sessions) == 1


@pytest.mark.asyncio
async def test_a_full_table_evicts_the_least_recently_active_session(udp):
    a = await udp.echo("a")
    listener, port = await udp.listener(udp.settings(a, max_sessions=2))
    first, second, third = [await udp.client(port) for _ in range(3)]
    await first.ask(b"1")
    await second.ask(b"2")
    await first.ask(b"1 again")

    await third.ask(b"3")

    assert set(listener.sessions) == {first.address, third.address}
    assert listener.evicted == 1
    assert udp.stats.active_connections == 2


# -- access control --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_acl_is_checked_per_client(udp):
    a = await udp.echo("a")
    acl = AccessControl("whitelist", ["127.0.0.2/32"])
    listener, port = await udp.listener(udp.settings(a, acl=acl))
    allowed = await udp.client(port, source="127.0.0.2")
    refused = await udp.client(port, source="127.0.0.1")

    refused.send(b"let me in")
    await wait_for(lambda: udp.stats.denied_connections == 1)
    answer = await allowed.ask(b"hello")

    assert answer == b"a:hello"
    assert [data for _, data in a.received] == [b"hello"]
    assert set(listener.sessions) == {allowed.address}


@pytest.mark.asyncio
async def test_a_new_generation_closes_sessions_its_acl_refuses_and_keeps_the_rest(udp):
    a = await udp.echo("a")
    backend = Backend("a", "127.0.0.1", a.port)
    listener, port = await udp.listener(udp.settings(backend))
    kept = await udp.client(port, source="127.0.0.2")
    cut = await udp.client(port, source="127.0.0.3")
    await kept.ask(b"1")
    kept_upstream = a.received[-1][0]
    await cut.ask(b"1")

    # The new generation has a rebuilt server group: same server, new Backend object.
    successor = Backend("a", "127.0.0.1", a.port)
    listener.update(udp.settings(successor, acl=AccessControl("blacklist", ["127.0.0.3"])))
    await kept.ask(b"2")

    assert set(listener.sessions) == {kept.address}
    # The kept session still uses its upstream socket, so the server sees the same peer.
    assert a.received[-1] == (kept_upstream, b"2")
    assert (backend.active, successor.active) == (0, 1)


# -- failures and health checks --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_port_unreachable_closes_the_session_and_a_retry_reaches_another_server(udp):
    live = await udp.echo("live")
    dead = Backend("dead", "127.0.0.1", closed_udp_port())
    listener, port = await udp.listener(udp.settings(dead, Backend("live", "127.0.0.1", live.port)))
    client = await udp.client(port)

    client.send(b"into the void")
    # ICMP port unreachable reaches the session's socket, which closes the session.
    await wait_for(lambda: udp.stats.total_connections == 1 and not listener.sessions)

    assert await client.ask(b"retry") == b"live:retry"
    assert dead.active == 0


@pytest.mark.asyncio
async def test_udp_probe_results(udp):
    echo = await udp.echo("svc")
    silent = await udp.echo("silent", silent=True)

    ok = await udp_probe(UdpHealthCheckSpec(request=b"ping"), "127.0.0.1", echo.port)
    matching = await udp_probe(
        UdpHealthCheckSpec(request=b"ping", expected=b"svc:"), "127.0.0.1", echo.port
    )
    wrong = await udp_probe(
        UdpHealthCheckSpec(request=b"ping", expected=b"pong"), "127.0.0.1", echo.port
    )
    unreachable = await udp_probe(UdpHealthCheckSpec(), "127.0.0.1", closed_udp_port())
    quiet = await udp_probe(UdpHealthCheckSpec(timeout=0.2), "127.0.0.1", silent.port)
    other_port = await udp_probe(UdpHealthCheckSpec(port=echo.port), "127.0.0.1", 9)

    # Each result carries its reason code, so nothing reads it back from the text.
    assert ok == (True, "ok (UDP reply, 8 bytes)", "ok", None)
    assert matching[:3] == (True, "ok (UDP reply, 8 bytes)", "ok")
    assert wrong == (
        False,
        "reply does not contain the expected response",
        "invalid_response",
        None,
    )
    assert unreachable == (False, "port unreachable", "refused", None)
    assert quiet == (False, "no reply within 0.2s", "timeout", None)
    assert other_port[0] is True and other_port.code == "ok"
    assert [data for _, data in echo.received].count(b"ping") == 3


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"port": 0}, "port"),
        ({"request": b"x" * 513}, "payloads"),
        ({"interval": 0}, "positive"),
        ({"unhealthy_threshold": 0}, "thresholds"),
    ],
)
def test_udp_health_check_spec_refuses_bad_values(fields, message):
    with pytest.raises(ValueError, match=message):
        UdpHealthCheckSpec(**fields)


@pytest.mark.asyncio
async def test_health_check_takes_a_dead_udp_backend_out_and_moves_its_clients(udp):
    a, b = await udp.echo("a"), await udp.echo("b")
    backend_a = Backend("a", "127.0.0.1", a.port)
    backend_b = Backend("b", "127.0.0.1", b.port)
    listener, port = await udp.listener(udp.settings(backend_a, backend_b))
    client = await udp.client(port)
    assert await client.ask(b"before") == b"a:before"
    checker = HealthChecker(
        UdpHealthCheckSpec(request=b"health", unhealthy_threshold=2, timeout=1.0),
        [backend_a, backend_b],
        probe=udp_probe,
    )
    assert await checker.check_once(backend_a) is False

    # Server a dies: its port now answers ICMP port unreachable.
    a.transport.close()
    await checker.check_once(backend_a)
    flipped = await checker.check_once(backend_a)
    await checker.check_once(backend_b)

    assert flipped is True
    assert (backend_a.healthy, backend_a.health_reason) == (False, "port unreachable")
    assert checker.state(backend_a).code == "refused"
    assert backend_b.healthy is True
    assert await client.ask(b"after") == b"b:after"
    assert listener.session_backends() == {client.address: "b"}


def test_the_proxy_and_probe_behave_the_same_on_uvloop():
    # The dataplane runs on uvloop; add_reader and ICMP errors must work there too.
    async def scenario():
        harness = Harness()
        try:
            echo = await harness.echo("e")
            listener, port = await harness.listener(
                harness.settings(Backend("dead", "127.0.0.1", closed_udp_port()), echo)
            )
            client = await harness.client(port)
            client.send(b"void")
            await wait_for(lambda: harness.stats.total_connections == 1 and not listener.sessions)
            answer = await client.ask(b"hello")
            probes = [
                await udp_probe(UdpHealthCheckSpec(), "127.0.0.1", echo.port),
                await udp_probe(UdpHealthCheckSpec(), "127.0.0.1", closed_udp_port()),
            ]
            return answer, probes
        finally:
            harness.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        answer, probes = runner.run(asyncio.wait_for(scenario(), WAIT * 2))

    assert answer == b"e:hello"
    assert [probe[:3] for probe in probes] == [
        (True, "ok (UDP reply, 2 bytes)", "ok"),
        (False, "port unreachable", "refused"),
    ]


# -- lifecycle and snapshot ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_close_drops_every_session_and_frees_the_port(udp):
    a = await udp.echo("a")
    backend = Backend("a", "127.0.0.1", a.port)
    listener, port = await udp.listener(udp.settings(backend))
    client = await udp.client(port)
    await client.ask(b"x")

    listener.close()
    await asyncio.sleep(0)

    assert listener.sessions == {}
    assert backend.active == 0
    assert udp.stats.active_connections == 0
    with contextlib.closing(bind_udp("127.0.0.1", port)):
        pass


def test_settings_from_a_snapshot_listener():
    listener = Listener(
        id="lsn-udp",
        protocol="udp",
        port=5353,
        scheduler="source_ip_hash",
        idle_timeout=45,
        acl=AclSetting(mode="blacklist", acl_id="acl-block"),
    )
    snapshot = Snapshot(
        instance_id="lb-test0001", generation=1, acls=(Acl("acl-block", ("10.0.0.0/8",)),)
    )
    backends = [Backend("srv-1", "127.0.0.1", 53)]

    settings = UdpSettings.from_listener(listener, snapshot, backends, ListenerStats())

    assert settings.idle_timeout == 45.0
    assert settings.acl is not None
    assert not settings.acl.allows("10.1.2.3")
    assert settings.acl.allows("192.0.2.1")
    assert settings.pick("192.0.2.1") is backends[0]
