"""Server states on a node with real sockets: a draining server takes nothing new while what it
serves finishes, until its deadline cuts the rest; a server in maintenance is out at once.

Each test drives a node with snapshots and asserts what the client got and what the backends
received. The slow download is a streaming backend whose chunks the test releases by hand, so no
assertion depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from dataplane.config import ConfigError, Snapshot
from tests.dataplane.conftest import (
    WAIT,
    LoopThread,
    get,
    listener,
    read_until_closed,
    server_group,
    snapshot,
    wait_until,
)
from tests.dataplane.test_datagram_node import (  # noqa: F401 (fixture)
    ask,
    free_udp_port,
    udp_client,
    udp_echoes,
    udp_group,
)
from tests.dataplane.test_tcp import echo, tcp_group, tcp_listener  # noqa: F401 (fixture)
from tests.fixtures.ports import free_port

CHUNK = b"x" * 1000


class StreamingBackend:
    """Answers every request with a chunked body sent one chunk at a time, when the test says."""

    def __init__(self, name: str, loop_thread: LoopThread) -> None:
        self.name = name
        self.loop_thread = loop_thread
        self.port = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        # Connections that ended, and the chunks each response is still to send.
        self.closed_connections = 0
        self.chunks: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()

    def send(self, *chunks: bytes | None) -> None:
        """Release chunks of the response being sent (None ends it)."""
        for chunk in chunks:
            self.loop_thread.loop.call_soon_threadsafe(self.chunks.put_nowait, chunk)

    async def _next_chunk(self, reader: asyncio.StreamReader) -> bytes | None:
        """The next chunk released, or ConnectionError if the proxy closes the connection first
        (it sends nothing more while the response is under way)."""
        chunk = asyncio.ensure_future(self.chunks.get())
        closed = asyncio.ensure_future(reader.read(1))
        await asyncio.wait({chunk, closed}, return_when=asyncio.FIRST_COMPLETED)
        if chunk.done():
            closed.cancel()
            # Let the cancelled read go before the next request head is read.
            await asyncio.gather(closed, return_exceptions=True)
            return chunk.result()
        chunk.cancel()
        raise ConnectionResetError("the proxy closed the connection")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )
                while (chunk := await self._next_chunk(reader)) is not None:
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed_connections += 1
            self.writers.discard(writer)


@pytest.fixture
def streaming(loop_thread: LoopThread):
    started: list[StreamingBackend] = []

    def start(name: str) -> StreamingBackend:
        backend = StreamingBackend(name, loop_thread)
        loop_thread.run(backend.start())
        started.append(backend)
        return backend

    yield start
    for backend in started:
        loop_thread.run(backend.stop())


def with_states(group: dict[str, Any], *states: dict[str, Any]) -> dict[str, Any]:
    """The group with each server's fields updated (state, drain_deadline, weight)."""
    changes = list(states) + [{}] * (len(group["servers"]) - len(states))
    servers = [dict(s, **change) for s, change in zip(group["servers"], changes, strict=True)]
    return dict(group, servers=servers)


def draining(seconds: int) -> dict[str, Any]:
    return {"state": "draining", "drain_deadline": int(time.time()) + seconds}


ENABLED: dict[str, Any] = {}
MAINTENANCE = {"state": "maintenance"}


def start_download(port: int) -> socket.socket:
    """A GET whose response has begun: the head and the first chunk have arrived."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.sendall(b"GET /download HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")
    return sock


def received_first_chunk(sock: socket.socket) -> bytes:
    data = b""
    while CHUNK not in data:
        piece = sock.recv(65536)
        assert piece, data
        data += piece
    return data


def backend_status(dataplane, listener_id: str, server_id: str) -> dict[str, Any]:
    backends = dataplane.status()["listeners"][listener_id]["backends"]
    return next(backend for backend in backends if backend["id"] == server_id)


# -- HTTP ----------------------------------------------------------------------------------------


def test_draining_server_gets_nothing_new_while_its_long_download_completes(
    dataplane, streaming, backends
):
    slow, other = streaming("slow"), backends("other")
    group = server_group(slow, (other, 0))
    port = free_port()
    lsn = listener(port)
    assert dataplane.apply(snapshot([lsn], [group]))["lsn-web"]["status"] == "running"

    # Given a download under way from the only server with a weight...
    sock = start_download(port)
    slow.send(CHUNK)
    head = received_first_chunk(sock)
    assert head.startswith(b"HTTP/1.1 200 ")

    # ...when it drains (an hour to go) and the other server takes the traffic,
    drained = with_states(group, draining(3600), {"weight": 100})
    dataplane.apply(snapshot([lsn], [drained], generation=2))
    # then every new request goes to the other server,
    answers = [get(port, f"/new/{n}") for n in range(6)]
    assert [(status, body) for status, _, body in answers] == [(200, b"other")] * 6
    assert len(slow.requests) == 1
    assert [r.target for r in other.requests] == [f"/new/{n}" for n in range(6)]
    # the status says it drains and how long is left,
    state = backend_status(dataplane, "lsn-web", slow_id(group))
    assert state["state"] == "draining"
    assert 3500 < state["drain_seconds_left"] <= 3600
    assert backend_status(dataplane, "lsn-web", other_id(group))["drain_seconds_left"] is None
    # and the download completes, every byte of it.
    slow.send(CHUNK, CHUNK, None)
    rest = read_until_closed(sock)
    sock.close()
    body = (head + rest).partition(b"\r\n\r\n")[2]
    assert body == b"3e8\r\n" + CHUNK + b"\r\n" + (b"3e8\r\n" + CHUNK + b"\r\n") * 2 + b"0\r\n\r\n"


def slow_id(group: dict[str, Any]) -> str:
    return group["servers"][0]["id"]


def other_id(group: dict[str, Any]) -> str:
    return group["servers"][1]["id"]


def test_what_remains_on_a_draining_server_is_cut_at_its_deadline(dataplane, streaming, backends):
    slow, other = streaming("slow"), backends("other")
    group = server_group(slow, (other, 0))
    port = free_port()
    lsn = listener(port)
    dataplane.apply(snapshot([lsn], [group]))
    sock = start_download(port)
    slow.send(CHUNK)
    head = received_first_chunk(sock)

    # A drain with two seconds to go: the download never finishes in time.
    dataplane.apply(
        snapshot([lsn], [with_states(group, draining(2), {"weight": 100})], generation=2)
    )
    rest = read_until_closed(sock)
    sock.close()
    # The client got the start of the body and then a closed connection, never the last chunk.
    assert CHUNK in head
    assert not (head + rest).endswith(b"0\r\n\r\n")
    assert wait_until(lambda: slow.closed_connections == 1)
    assert (
        dataplane.loop_thread.call(lambda: dataplane.node.pool.open_count("127.0.0.1", slow.port))
        == 0
    )
    assert backend_status(dataplane, "lsn-web", slow_id(group))["drain_seconds_left"] == 0
    # The other server still serves.
    assert get(port, "/after")[2] == b"other"


def test_maintenance_cuts_what_remains_at_once(dataplane, streaming, backends):
    slow, other = streaming("slow"), backends("other")
    group = server_group(slow, other)
    port = free_port()
    lsn = listener(port)
    dataplane.apply(snapshot([lsn], [with_states(group, ENABLED, {"weight": 0})]))
    sock = start_download(port)
    slow.send(CHUNK)
    head = received_first_chunk(sock)

    dataplane.apply(snapshot([lsn], [with_states(group, MAINTENANCE)], generation=2))
    rest = read_until_closed(sock)
    sock.close()
    assert not (head + rest).endswith(b"0\r\n\r\n")
    assert wait_until(lambda: slow.closed_connections == 1)
    assert [get(port, "/")[2] for _ in range(3)] == [b"other"] * 3
    assert len(slow.requests) == 1
    status = backend_status(dataplane, "lsn-web", slow_id(group))
    assert (status["state"], status["drain_seconds_left"]) == ("maintenance", None)
    # Health checks are not the state: a server in maintenance keeps its health report.
    assert status["healthy"] is True


def test_every_server_out_of_service_answers_503(dataplane, backends):
    one, two = backends("one"), backends("two")
    group = server_group(one, two)
    port = free_port()
    lsn = listener(port)
    dataplane.apply(snapshot([lsn], [with_states(group, MAINTENANCE, draining(60))]))
    assert get(port)[0] == 503
    assert one.requests == two.requests == []
    # Enabled again, the server takes traffic at once.
    dataplane.apply(snapshot([lsn], [with_states(group, ENABLED, draining(60))], generation=2))
    assert get(port)[2] == b"one"


def test_idle_keep_alive_connections_to_a_draining_server_are_closed(dataplane, backends):
    one, two = backends("one"), backends("two")
    group = server_group(one, (two, 0))
    port = free_port()
    lsn = listener(port)
    dataplane.apply(snapshot([lsn], [group]))
    assert get(port)[2] == b"one"
    pool = dataplane.node.pool
    # The pooled connection to "one" waits for the next request...
    assert dataplane.loop_thread.call(lambda: pool.open_count("127.0.0.1", one.port)) == 1
    dataplane.apply(
        snapshot([lsn], [with_states(group, draining(600), {"weight": 100})], generation=2)
    )
    # ...and is closed when it drains: no request will ever be lent it.
    assert wait_until(lambda: not one.writers)
    assert dataplane.loop_thread.call(lambda: pool.open_count("127.0.0.1", one.port)) == 0
    assert [get(port)[2] for _ in range(4)] == [b"two"] * 4
    assert one.connections == 1


def test_a_cookie_naming_a_draining_server_gets_another(dataplane, backends):
    one, two = backends("one"), backends("two")
    group = server_group(one, two)
    port = free_port()
    lsn = listener(port, persistence={"mode": "insert_cookie", "cookie_timeout": 600})
    dataplane.apply(snapshot([lsn], [group]))
    status, headers, first = get(port)
    cookie = headers["Set-Cookie"].split(";")[0]
    # The cookie keeps the client on its server while that server is enabled.
    assert {get(port, headers={"Cookie": cookie})[2] for _ in range(4)} == {first}

    index = 0 if first == b"one" else 1
    states = [ENABLED, ENABLED]
    states[index] = draining(600)
    dataplane.apply(snapshot([lsn], [with_states(group, *states)], generation=2))
    status, headers, body = get(port, headers={"Cookie": cookie})
    assert status == 200
    assert body != first
    # The response points the client at its new server.
    assert headers["Set-Cookie"].split(";")[0] != cookie
    drained = one if first == b"one" else two
    assert len(drained.requests) == 5


def test_a_server_back_from_maintenance_ramps_up_with_slow_start(dataplane, backends):
    one, two = backends("one"), backends("two")
    group = dict(server_group(one, two), slow_start=True, slow_start_duration=600)
    port = free_port()
    lsn = listener(port)
    dataplane.apply(snapshot([lsn], [with_states(group, MAINTENANCE)]))
    status = backend_status(dataplane, "lsn-web", slow_id(group))
    assert status["state"] == "maintenance"
    dataplane.apply(snapshot([lsn], [group], generation=2))
    # Enabled again, it starts its ramp as a server that joins does; the other is at full weight.
    assert backend_status(dataplane, "lsn-web", slow_id(group))["slow_start_percent"] < 50
    assert backend_status(dataplane, "lsn-web", other_id(group))["slow_start_percent"] is None


# -- TCP -----------------------------------------------------------------------------------------


def exchange(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    return sock.recv(65536)


def test_tcp_draining_server_keeps_its_connection_and_gets_no_new_one(dataplane, echo):  # noqa: F811
    one, two = echo("one"), echo("two")
    group = tcp_group(one, (two, 0))
    port = free_port()
    lsn = tcp_listener(port)
    dataplane.apply(snapshot([lsn], [group]))
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as kept:
        assert exchange(kept, b"a") == b"one:a"
        dataplane.apply(
            snapshot([lsn], [with_states(group, draining(600), {"weight": 100})], generation=2)
        )
        # The connection on the draining server goes on...
        assert exchange(kept, b"b") == b"one:b"
        # ...while new ones go to the other server.
        for n in range(4):
            with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as new:
                assert exchange(new, b"%d" % n) == b"two:%d" % n
        assert one.connections == 1
        # Maintenance then closes it at once.
        dataplane.apply(
            snapshot([lsn], [with_states(group, MAINTENANCE, {"weight": 100})], generation=3)
        )
        assert read_until_closed(kept) == b""


def test_tcp_connection_on_a_draining_server_is_cut_at_the_deadline(dataplane, echo):  # noqa: F811
    one, two = echo("one"), echo("two")
    group = tcp_group(one, (two, 0))
    port = free_port()
    lsn = tcp_listener(port, access_log=True)
    dataplane.apply(snapshot([lsn], [group]))
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as kept:
        assert exchange(kept, b"a") == b"one:a"
        dataplane.apply(
            snapshot([lsn], [with_states(group, draining(1), {"weight": 100})], generation=2)
        )
        assert read_until_closed(kept) == b""
    assert wait_until(lambda: not one.writers)
    # The access log says why the connection ended.
    lines = dataplane.loop_thread.call(lambda: dataplane.node.access_log("lsn-tcp"))["lines"]
    assert [(line["server"], line["termination"]) for line in lines] == [
        ("srv-0", "server_out_of_service")
    ]


def test_source_ip_persistence_to_a_draining_server_moves_the_client(dataplane, echo):  # noqa: F811
    one, two = echo("one"), echo("two")
    group = tcp_group(one, two)
    port = free_port()
    lsn = tcp_listener(port, persistence={"mode": "source_ip", "cookie_timeout": 600})
    dataplane.apply(snapshot([lsn], [group]))
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        first = exchange(sock, b"a").split(b":")[0]
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        assert exchange(sock, b"b").split(b":")[0] == first
    states = [draining(600), ENABLED] if first == b"one" else [ENABLED, draining(600)]
    dataplane.apply(snapshot([lsn], [with_states(group, *states)], generation=2))
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            assert exchange(sock, b"c").split(b":")[0] != first


def test_source_ip_hash_moves_only_the_clients_of_a_draining_server():
    from dataplane.balancing import Backend, make_scheduler

    servers = [Backend(f"srv-{n}", "127.0.0.1", 8000 + n) for n in range(3)]
    before = make_scheduler("source_ip_hash", servers)
    clients = [f"10.0.{n // 250}.{n % 250}" for n in range(1000)]
    placed = {client: before.pick(client) for client in clients}
    out = Backend("srv-1", "127.0.0.1", 8001, state="draining", drain_deadline=0)
    after = make_scheduler("source_ip_hash", [servers[0], out, servers[2]])
    for client in clients:
        picked = after.pick(client)
        assert picked is not None and picked.id != "srv-1"
        if placed[client].id != "srv-1":
            assert picked is placed[client]


# -- UDP -----------------------------------------------------------------------------------------


def test_udp_session_on_a_draining_server_goes_on_until_the_deadline(dataplane, udp_echoes):  # noqa: F811
    one, two = udp_echoes("one"), udp_echoes("two")
    group = udp_group(one, two)
    port = free_udp_port()
    lsn = listener(port, protocol="udp", listener_id="lsn-udp")
    dataplane.apply(snapshot([lsn], [with_states(group, ENABLED, {"weight": 0})]))
    kept, fresh = udp_client(), udp_client()
    try:
        assert ask(kept, port, b"a") == b"one:a"
        dataplane.apply(snapshot([lsn], [with_states(group, draining(600))], generation=2))
        # The session on the draining server goes on; a new client goes to the other server.
        assert ask(kept, port, b"b") == b"one:b"
        assert ask(fresh, port, b"c") == b"two:c"
        assert dataplane.status()["listeners"]["lsn-udp"]["udp"]["sessions"] == 2
        # Maintenance closes the session: the client's next datagram opens one elsewhere.
        dataplane.apply(snapshot([lsn], [with_states(group, MAINTENANCE)], generation=3))
        assert dataplane.status()["listeners"]["lsn-udp"]["udp"]["sessions"] == 1
        assert ask(kept, port, b"d") == b"two:d"
        assert one.received == 2
    finally:
        kept.close()
        fresh.close()


# -- metrics -----------------------------------------------------------------------------------


def test_metrics_give_each_servers_state_and_drain_time_left(dataplane, backends):
    from prometheus_client.parser import text_string_to_metric_families

    from dataplane.metrics import ControlCounters, render

    one, two, three = backends("one"), backends("two"), backends("three")
    group = server_group(one, two, three)
    dataplane.apply(
        snapshot([listener(free_port())], [with_states(group, ENABLED, draining(900), MAINTENANCE)])
    )
    text = render(dataplane.status(), ControlCounters()).decode()
    samples = {
        (sample.name, sample.labels.get("server"), sample.labels.get("state")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith(("ferry_server_state", "ferry_server_drain"))
    }
    ids = [server["id"] for server in group["servers"]]
    for server_id, current in zip(ids, ("enabled", "draining", "maintenance"), strict=True):
        for state in ("enabled", "draining", "maintenance"):
            value = samples[("ferry_server_state", server_id, state)]
            assert value == (1 if state == current else 0)
    left = [key for key in samples if key[0] == "ferry_server_drain_seconds_left"]
    assert left == [("ferry_server_drain_seconds_left", ids[1], None)]
    assert 800 < samples[left[0]] <= 900


# -- the snapshot --------------------------------------------------------------------------------


def test_a_restarted_node_counts_the_time_left_from_the_wall_clock(loop_thread, backends):
    from tests.dataplane.conftest import NodeHandle

    one = backends("one")
    group = with_states(server_group(one), {"state": "draining", "drain_deadline": 0})
    # The same snapshot, read again after a restart long past its deadline: nothing left.
    saved = Snapshot.from_dict(snapshot([listener(free_port())], [group])).to_json()
    node = NodeHandle(loop_thread)
    try:
        node.apply(Snapshot.from_json(saved))
        assert backend_status(node, "lsn-web", group["servers"][0]["id"])["drain_seconds_left"] == 0
    finally:
        loop_thread.run(node.node.shutdown(0))


@pytest.mark.parametrize(
    ("server", "reason"),
    [
        ({"state": "draining"}, "servers[0].drain_deadline: is required while draining"),
        ({"state": "enabled", "drain_deadline": 1}, "only a draining server has one"),
        ({"state": "maintenance", "drain_deadline": 1}, "only a draining server has one"),
        ({"state": "paused"}, "servers[0].state: 'paused' is not one of enabled, draining"),
        ({"state": "draining", "drain_deadline": -1}, "drain_deadline: -1 is out of range"),
        ({"state": "draining", "drain_deadline": 2**62}, "is out of range 0-4102444800"),
        ({"state": "draining", "drain_deadline": True}, "drain_deadline: must be an integer"),
        ({"state": "draining", "drain_deadline": "soon"}, "drain_deadline: must be an integer"),
        ({"state": 1}, "servers[0].state: must be a string"),
    ],
)
def test_bad_server_states_are_refused(server, reason):
    data = snapshot(
        [],
        [
            {
                "id": "sgp-a",
                "servers": [{"id": "srv-1", "address": "10.0.0.1", "port": 80, **server}],
            }
        ],
    )
    with pytest.raises(ConfigError) as refused:
        Snapshot.from_dict(data)
    assert any(reason in line for line in refused.value.reasons), refused.value.reasons


def test_states_round_trip_through_json():
    data = snapshot(
        [],
        [
            {
                "id": "sgp-a",
                "servers": [
                    {"id": "srv-1", "address": "10.0.0.1", "port": 80},
                    {
                        "id": "srv-2",
                        "address": "10.0.0.2",
                        "port": 80,
                        "state": "draining",
                        "drain_deadline": 1_800_000_000,
                    },
                    {"id": "srv-3", "address": "10.0.0.3", "port": 80, "state": "maintenance"},
                ],
            }
        ],
    )
    parsed = Snapshot.from_json(Snapshot.from_dict(data).to_json())
    servers = parsed.server_groups[0].servers
    assert [(s.state, s.drain_deadline) for s in servers] == [
        ("enabled", None),
        ("draining", 1_800_000_000),
        ("maintenance", None),
    ]
