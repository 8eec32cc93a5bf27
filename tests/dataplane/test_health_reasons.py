"""Why a server is up or down, as a real node reports it: each reason code from a real cause (a
refused port, a backend that hangs, one answering 503, TLS failures, a reset, something that is
not HTTP), the time the health last changed, the timeline of recent checks and the slow-start
percentage, all read from the node's status document."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest
import trustme

from dataplane.balancing import Backend
from dataplane.health import HISTORY, REASON_CODES, HealthChecker, HealthState
from dataplane.node import Node
from dataplane.udp_health import UdpHealthCheckSpec, udp_probe
from tests.dataplane.conftest import (
    NodeHandle,
    Recorded,
    Reply,
    listener,
    server_group,
    snapshot,
    wait_until,
)
from tests.fixtures.ports import free_port, refused_port

# Fast checks: one failure is enough to mark a server down.
FAST_HTTP = {
    "enabled": True,
    "protocol": "http",
    "interval": 1,
    "timeout": 1,
    "healthy_threshold": 1,
    "unhealthy_threshold": 1,
    "expected_codes": ["http_2xx"],
}
FAST_HTTPS = {**FAST_HTTP, "protocol": "https"}


@dataclass
class RawServer:
    """A loopback TCP server driven by one coroutine per connection (what a real broken backend
    does on the wire); ``name`` and ``port`` are what the snapshot helpers read."""

    name: str
    port: int = 0
    server: asyncio.Server | None = None


def raw_server(loop_thread, name: str, handler, *, tls: ssl.SSLContext | None = None) -> RawServer:
    async def start() -> asyncio.Server:
        return await asyncio.start_server(handler, "127.0.0.1", 0, ssl=tls)

    server = loop_thread.run(start())
    return RawServer(name, server.sockets[0].getsockname()[1], server)


@pytest.fixture
def raw_servers(loop_thread):
    started: list[RawServer] = []

    def make(name: str, handler, *, tls: ssl.SSLContext | None = None) -> RawServer:
        server = raw_server(loop_thread, name, handler, tls=tls)
        started.append(server)
        return server

    yield make

    async def stop() -> None:
        for item in started:
            item.server.close()

    loop_thread.run(stop())


async def hangs(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts, reads the request and never answers: a stuck application."""
    with contextlib.suppress(Exception):
        await reader.read(65536)
        # Until the checker gives up and closes (a timeout), or the test ends.
        await reader.read(65536)
    writer.transport.abort()


async def resets(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads the request, then closes with SO_LINGER 0: the kernel answers with a RST."""
    with contextlib.suppress(Exception):
        await reader.readuntil(b"\r\n\r\n")
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def ssh_banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Not HTTP at all: an SSH server on the checked port."""
    writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
    with contextlib.suppress(Exception):
        await writer.drain()
    writer.close()


async def endless_status_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A hostile server: a status line far longer than any HTTP server sends."""
    writer.write(b"HTTP/1.1 200 " + b"A" * 8192 + b"\r\n\r\n")
    with contextlib.suppress(Exception):
        await writer.drain()
    writer.close()


async def plain_http_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A plain HTTP server on a port checked over HTTPS: it answers the TLS ClientHello, which is
    not a request line, with 400 and closes (as nginx and most servers do)."""
    data = await reader.read(4096)
    if not data.split(b" ", 1)[0].isalpha():
        writer.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
        with contextlib.suppress(Exception):
            await writer.drain()
    writer.close()


async def answers_200(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
    writer.close()


@pytest.fixture(scope="module")
def backend_ca() -> trustme.CA:
    return trustme.CA(organization_name="Backend CA")


def tls_server_context(ca: trustme.CA, *, require_client_certificate: bool = False):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("backend.internal").configure_cert(context)
    if require_client_certificate:
        ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def closed_port() -> int:
    return refused_port()


@pytest.fixture
def mutual_tls_server(backend_ca):
    """A TLS server that requires a client certificate the health check does not have. It runs on
    blocking sockets in a thread, as OpenSSL servers do: the refusal reaches the client as a TLS
    alert, and the connection is closed gracefully after it (lingering, as nginx does)."""
    context = tls_server_context(backend_ca, require_client_certificate=True)
    listening = socket.create_server(("127.0.0.1", 0))
    listening.settimeout(0.2)
    stopped = threading.Event()

    def serve() -> None:
        while not stopped.is_set():
            try:
                raw, _ = listening.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            raw.settimeout(2)
            tls = context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            with contextlib.suppress(ssl.SSLError, OSError):
                tls.do_handshake()
            with contextlib.suppress(OSError):
                tls.shutdown(socket.SHUT_WR)
                while tls.recv(4096):
                    pass
            tls.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield RawServer("mutual", listening.getsockname()[1])
    stopped.set()
    thread.join(5)
    listening.close()


def backends_of(node: NodeHandle, listener_id: str) -> dict[str, dict[str, Any]]:
    entry = node.status()["listeners"][listener_id]
    return {backend["id"].split("-")[1]: backend for backend in entry["backends"]}


def all_checked(node: NodeHandle, listener_id: str, names: list[str]) -> bool:
    seen = backends_of(node, listener_id)
    return all(seen.get(name, {}).get("reason_code") for name in names)


def test_each_reason_code_comes_from_its_real_cause(
    dataplane, backends, raw_servers, backend_ca, mutual_tls_server
):
    # Given one HTTP-checked group and one HTTPS-checked group, with a server for each cause.
    started = time.time()
    healthy = backends("ok")
    unavailable = backends("unavailable", lambda request: Reply(status=503, body=b"down"))
    refused = RawServer("refused", closed_port())
    hang = raw_servers("hang", hangs)
    reset = raw_servers("reset", resets)
    banner = raw_servers("banner", ssh_banner)
    endless = raw_servers("endless", endless_status_line)
    tls_ok = raw_servers("tlsok", answers_200, tls=tls_server_context(backend_ca))
    plain = raw_servers("plain", plain_http_only)
    mutual = mutual_tls_server
    http_group = server_group(
        healthy, unavailable, refused, hang, reset, banner, endless,
        group_id="sgp-http", health_check=FAST_HTTP,
    )  # fmt: skip
    https_group = server_group(
        tls_ok, plain, mutual, group_id="sgp-https", protocol="https", health_check=FAST_HTTPS
    )
    plain_port, tls_port = free_port(), free_port()

    # When the node runs them and checks every server once.
    dataplane.apply(
        snapshot(
            [
                listener(plain_port, listener_id="lsn-http", group_id="sgp-http"),
                listener(tls_port, listener_id="lsn-https", group_id="sgp-https"),
            ],
            [http_group, https_group],
        )
    )
    http_names = ["ok", "unavailable", "refused", "hang", "reset", "banner", "endless"]
    assert wait_until(lambda: all_checked(dataplane, "lsn-http", http_names), timeout=15)
    assert wait_until(
        lambda: all_checked(dataplane, "lsn-https", ["tlsok", "plain", "mutual"]), timeout=15
    )

    # Then the status document says why, in a code and in words.
    http = backends_of(dataplane, "lsn-http")
    https = backends_of(dataplane, "lsn-https")
    shown = {
        name: (entry["healthy"], entry["reason_code"]) for name, entry in {**http, **https}.items()
    }
    assert shown == {
        "ok": (True, "ok"),
        "unavailable": (False, "status_mismatch"),
        "refused": (False, "refused"),
        "hang": (False, "timeout"),
        "reset": (False, "reset"),
        "banner": (False, "invalid_response"),
        "endless": (False, "invalid_response"),
        "tlsok": (True, "ok"),
        "plain": (False, "tls_failure"),
        "mutual": (False, "tls_failure"),
    }
    assert http["unavailable"]["reason"] == "HTTP 503 not in http_2xx"
    assert http["unavailable"]["http_status"] == 503
    assert http["ok"]["reason"] == "ok (HTTP 200)" and http["ok"]["http_status"] == 200
    assert http["refused"]["reason"] == "connection refused"
    assert http["hang"]["reason"] == "timeout after 1.0s"
    assert https["plain"]["reason"].startswith("TLS handshake failed: ")
    assert https["mutual"]["reason"] == ("TLS handshake failed: TLSV13_ALERT_CERTIFICATE_REQUIRED")
    # The report rounds its times to the millisecond, which can be up to 0.5 ms past now.
    now = time.time() + 0.001
    for entry in [*http.values(), *https.values()]:
        assert entry["reason_code"] in REASON_CODES
        # The last change is a wall-clock time: when checking began, or the flip to down.
        assert started - 1 <= entry["last_change"] <= now
        assert entry["checks"], entry
        at, ok, code = entry["checks"][-1]
        assert (ok, code) == (entry["healthy"], entry["reason_code"])
        assert started - 1 <= at <= now
        # No slow start configured.
        assert entry["slow_start_percent"] is None
    # Servers that went down flipped at their first failed check (threshold 1).
    first_failure = http["unavailable"]["checks"][0][0]
    assert http["unavailable"]["last_change"] == pytest.approx(first_failure, abs=0.01)
    # What the backend saw: real health check requests.
    assert unavailable.requests and unavailable.requests[0].header("User-Agent") == (
        "lb-health-check"
    )


def test_the_timeline_shows_a_flip_and_its_time(dataplane, backends):
    # Given a server that answers 200 until it is told to fail.
    failing = {"now": False}

    def answer(request: Recorded) -> Reply:
        return Reply(status=503) if failing["now"] else Reply(status=200, body=b"ok")

    server = backends("web", answer)
    port = free_port()
    dataplane.apply(snapshot([listener(port)], [server_group(server, health_check=FAST_HTTP)]))
    assert wait_until(lambda: backends_of(dataplane, "lsn-web")["web"]["reason_code"] == "ok")
    up_since = backends_of(dataplane, "lsn-web")["web"]["last_change"]

    # When it starts answering 503.
    failing["now"] = True
    flipped_after = time.time()
    assert wait_until(lambda: not backends_of(dataplane, "lsn-web")["web"]["healthy"], timeout=10)

    # Then the last change moved to the failed check, and the timeline shows both.
    entry = backends_of(dataplane, "lsn-web")["web"]
    assert entry["reason_code"] == "status_mismatch"
    assert entry["last_change"] > up_since
    assert entry["last_change"] >= flipped_after - 0.01
    codes = [code for _, _, code in entry["checks"]]
    assert codes[0] == "ok" and codes[-1] == "status_mismatch"
    times = [at for at, _, _ in entry["checks"]]
    assert times == sorted(times)
    assert [ok for _, ok, _ in entry["checks"]] == [code == "ok" for code in codes]


def test_a_changed_group_with_the_same_check_keeps_the_timeline(dataplane, backends):
    a = backends("a", lambda request: Reply(status=503))
    b = backends("b")
    port = free_port()
    dataplane.apply(snapshot([listener(port)], [server_group(a, health_check=FAST_HTTP)]))
    assert wait_until(lambda: backends_of(dataplane, "lsn-web")["a"]["checks"], timeout=10)
    before = backends_of(dataplane, "lsn-web")["a"]

    # A server joins: the group is rebuilt, its health check is the same.
    dataplane.apply(
        snapshot([listener(port)], [server_group(a, b, health_check=FAST_HTTP)], generation=2)
    )

    after = backends_of(dataplane, "lsn-web")["a"]
    assert after["checks"][: len(before["checks"])] == before["checks"]
    assert (after["healthy"], after["reason_code"], after["last_change"]) == (
        False,
        "status_mismatch",
        before["last_change"],
    )


def test_without_a_health_check_there_is_no_code_and_no_timeline(dataplane, backends):
    web = backends("web")
    port = free_port()
    dataplane.apply(snapshot([listener(port)], [server_group(web)]))

    entry = backends_of(dataplane, "lsn-web")["web"]

    assert entry["reason"] == "health check disabled"
    assert (entry["reason_code"], entry["last_change"], entry["checks"]) == (None, None, [])


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_slow_start_percentage_grows_with_the_ramp(loop_thread, backends):
    clock = FakeClock()
    node = NodeHandle.__new__(NodeHandle)
    node.loop_thread = loop_thread
    node.node = loop_thread.call(lambda: Node(clock=clock))
    try:
        a, b = backends("a"), backends("b")
        port = free_port()
        group = server_group(a)
        group.update(slow_start=True, slow_start_duration=100)
        node.apply(snapshot([listener(port, scheduler="weighted_round_robin")], [group]))
        assert backends_of(node, "lsn-web")["a"]["slow_start_percent"] is None

        # b joins a running group: it ramps from 0 % to full weight over 100 s.
        grown = server_group(a, b)
        grown.update(slow_start=True, slow_start_duration=100)
        node.apply(
            snapshot([listener(port, scheduler="weighted_round_robin")], [grown], generation=2)
        )
        assert backends_of(node, "lsn-web")["b"]["slow_start_percent"] == 0
        clock.now += 40
        assert backends_of(node, "lsn-web")["b"]["slow_start_percent"] == 40
        assert backends_of(node, "lsn-web")["a"]["slow_start_percent"] is None
        clock.now += 60
        assert backends_of(node, "lsn-web")["b"]["slow_start_percent"] is None
    finally:
        loop_thread.run(node.node.shutdown(0))


# The state machine with a fake clock: bounded timeline, last change only on a flip.


def test_the_timeline_keeps_the_last_checks_only():
    state = HealthState(healthy_threshold=1, unhealthy_threshold=1, since=0.0)

    for second in range(1, HISTORY + 6):
        state.record(second % 2 == 0, "x", now=float(second), wall=float(second))

    assert len(state.history) == HISTORY
    assert state.history[0][0] == 6.0 and state.history[-1][0] == HISTORY + 5.0
    assert state.changed_at == HISTORY + 5.0


def test_last_change_moves_only_when_health_flips():
    state = HealthState(healthy_threshold=2, unhealthy_threshold=2, since=100.0)

    state.record(False, "connection refused", now=1.0, wall=101.0)
    assert (state.healthy, state.changed_at, state.code) == (True, 100.0, "refused")
    state.record(False, "timeout after 2.0s", now=2.0, wall=102.0)
    assert (state.healthy, state.changed_at, state.code) == (False, 102.0, "timeout")
    state.record(False, "connection reset", now=3.0, wall=103.0)
    assert (state.changed_at, state.code) == (102.0, "reset")


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.transport.sendto(b"pong:" + data, addr)


@pytest.mark.asyncio
async def test_a_udp_check_brings_its_own_reason_code():
    """The UDP probe answers its code with its text; the checker records it as it came."""
    loop = asyncio.get_running_loop()
    echo, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    echo_port = echo.get_extra_info("sockname")[1]
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]
    try:
        cases = [
            (UdpHealthCheckSpec(timeout=1.0), closed_port, "refused", "port unreachable"),
            (UdpHealthCheckSpec(timeout=0.2), silent.getsockname()[1], "timeout", "no reply"),
            (UdpHealthCheckSpec(expected=b"nope"), echo_port, "invalid_response", "reply does"),
            (UdpHealthCheckSpec(request=b"hi"), echo_port, "ok", "ok (UDP reply, 7 bytes)"),
        ]
        seen = []
        for spec, port, _, _ in cases:
            backend = Backend("srv-u", "127.0.0.1", port)
            checker = HealthChecker(spec, [backend], probe=udp_probe, wall_clock=lambda: 5.0)
            await checker.check_once(backend)
            state = checker.state(backend)
            seen.append((state.code, state.reason))
            assert list(state.history) == [(5.0, state.code == "ok", state.code)]
    finally:
        echo.close()
        silent.close()

    assert [code for code, _ in seen] == [code for _, _, code, _ in cases]
    for (_, reason), (_, _, _, text) in zip(seen, cases, strict=True):
        assert reason.startswith(text)


def test_a_servers_timeline_is_given_once_per_group_not_per_listener(dataplane, backends):
    """Many listeners on one group: each server's last checks appear in one listener entry, so
    the status document grows with listeners by the small server entries only."""
    web = [backends(f"web{index}") for index in range(20)]
    other = backends("other")
    ports = [free_port() for _ in range(11)]
    listeners = [listener(port, listener_id=f"lsn-web{index}") for index, port in enumerate(ports)]
    listeners[-1] = listener(ports[-1], listener_id="lsn-other", group_id="sgp-other")
    groups = [
        server_group(*web, health_check=FAST_HTTP),
        server_group(other, group_id="sgp-other", health_check=FAST_HTTP),
    ]
    dataplane.apply(snapshot(listeners, groups))

    def timelines() -> list[tuple[str, str]]:
        found = []
        for listener_id, entry in dataplane.status()["listeners"].items():
            found += [
                (listener_id, server["id"]) for server in entry["backends"] if server.get("checks")
            ]
        return found

    # Every server checked at least twice, and seen in one listener's entry each.
    def checked_twice() -> bool:
        entries = dataplane.status()["listeners"]
        return (
            all(
                len(server.get("checks") or []) >= 2 or "checks" not in server
                for entry in entries.values()
                for server in entry["backends"]
            )
            and len(timelines()) == 21
        )

    assert wait_until(checked_twice, timeout=15)
    status = dataplane.status()["listeners"]
    owners = {listener_id for listener_id, _ in timelines()}
    assert len(owners) == 2 and "lsn-other" in owners
    web_owner = (owners - {"lsn-other"}).pop()
    for listener_id, entry in status.items():
        for server in entry["backends"]:
            # The rest of a server's health is in every entry.
            assert server["reason_code"] == "ok" and server["last_change"] is not None
            assert ("checks" in server) is (listener_id in (web_owner, "lsn-other"))

    # The size bound: a server entry without its timeline stays small; with a full one (HISTORY
    # checks of about 40 bytes each) it is given once per group.
    def size(value: Any) -> int:
        return len(json.dumps(value))

    servers = [server for entry in status.values() for server in entry["backends"]]
    plain = max(size(server) for server in servers if "checks" not in server)
    per_check = max(size(check) for server in servers for check in server.get("checks", []))
    assert plain <= 450
    assert per_check <= 45
    full_timeline = HISTORY * (per_check + 2)
    listener_servers = sum(len(entry["backends"]) for entry in status.values())
    assert listener_servers == 10 * 20 + 1
    bound = listener_servers * plain + 21 * full_timeline
    assert size(status) <= bound + 11 * 2000
    # At 100 listeners of 20 servers, a status read stays near 100 x 20 x 450 bytes, instead of
    # 100 x 20 x (450 + HISTORY x 45) with the timeline repeated.
    assert 100 * 20 * plain + 20 * full_timeline < 1_000_000
