"""Health checks: the threshold state machine, real probes on loopback, and the checker loop."""

import asyncio
import contextlib
import ssl

import pytest
import pytest_asyncio
import trustme
import uvloop

from dataplane.balancing import Backend
from dataplane.health import HealthChecker, HealthCheckSpec, HealthState, probe
from tests.fixtures.ports import free_port as closed_port

# Every wait in this file is bounded by this, so a broken check fails instead of hanging.
WAIT_LIMIT = 10.0


# HealthCheckSpec


def test_spec_defaults_follow_the_tcp_ssl_guide():
    spec = HealthCheckSpec()

    assert (spec.protocol, spec.interval, spec.timeout) == ("tcp", 5.0, 2.0)
    assert (spec.healthy_threshold, spec.unhealthy_threshold) == (3, 3)


@pytest.mark.parametrize(
    ("expected_codes", "status", "accepted"),
    [
        (("http_2xx",), 200, True),
        (("http_2xx",), 299, True),
        (("http_2xx",), 301, False),
        (("http_2xx", "http_3xx"), 302, True),
        (("http_4xx",), 404, True),
        (("200", "204"), 204, True),
        (("200", "204"), 201, False),
        (("http_5xx", "404"), 404, True),
    ],
)
def test_expected_codes_take_classes_and_exact_codes(expected_codes, status, accepted):
    assert (
        HealthCheckSpec(protocol="http", expected_codes=expected_codes).accepts(status) is accepted
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"protocol": "udp"}, "protocol"),
        ({"port": 0}, "port"),
        ({"port": 65536}, "port"),
        ({"path": "health"}, "path"),
        ({"path": "/a b"}, "path"),
        ({"domain": "a\r\nX-Injected: 1"}, "domain"),
        ({"interval": 0}, "positive"),
        ({"timeout": -1}, "positive"),
        ({"healthy_threshold": 0}, "thresholds"),
        ({"expected_codes": ()}, "at least one"),
        ({"expected_codes": ("http_6xx",)}, "http_6xx"),
        ({"expected_codes": ("2000",)}, "2000"),
    ],
)
def test_invalid_spec_is_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        HealthCheckSpec(**fields)


# HealthState


def test_server_goes_down_after_unhealthy_threshold_consecutive_failures():
    state = HealthState(healthy_threshold=2, unhealthy_threshold=3)

    assert state.record(False, "connection refused", now=1.0) is False
    assert state.record(False, "connection refused", now=2.0) is False
    assert state.healthy
    assert state.record(False, "connection refused", now=3.0) is True

    assert not state.healthy
    assert (state.reason, state.last_check) == ("connection refused", 3.0)


def test_a_success_resets_the_failure_count():
    state = HealthState(healthy_threshold=2, unhealthy_threshold=2)

    for now in range(10):
        ok = now % 2 == 0
        assert state.record(ok, "ok" if ok else "timeout after 2s", now=float(now)) is False

    assert state.healthy


def test_server_comes_back_after_healthy_threshold_consecutive_successes():
    state = HealthState(healthy_threshold=3, unhealthy_threshold=1, healthy=False)

    assert state.record(True, "ok (HTTP 200)", now=1.0) is False
    assert state.record(False, "HTTP 500 not in http_2xx", now=2.0) is False
    assert state.record(True, "ok (HTTP 200)", now=3.0) is False
    assert state.record(True, "ok (HTTP 200)", now=4.0) is False
    assert not state.healthy
    assert state.record(True, "ok (HTTP 200)", now=5.0) is True

    assert state.healthy
    assert state.reason == "ok (HTTP 200)"
    # Further successes do not flip again.
    assert state.record(True, "ok (HTTP 200)", now=6.0) is False


# probe() against real loopback servers


class HttpServer:
    """A loopback HTTP server that answers every request with one status and records requests."""

    def __init__(self, status: int = 200, *, answer: bool = True) -> None:
        self.status = status
        self.answer = answer
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _handle(self, reader, writer):
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_LIMIT)
            self.requests.append(request)
            if self.answer:
                writer.write(
                    b"HTTP/1.1 %d Whatever\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                    % self.status
                )
                await writer.drain()
            else:
                await asyncio.sleep(WAIT_LIMIT)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()

    async def start(self, ssl_context=None, port=0):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", port, ssl=ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self):
        self.server.close()
        # Connections left over are ours to end; do not wait for a peer that never closes.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.server.wait_closed(), 1.0)


@pytest_asyncio.fixture
async def http_server():
    servers = []

    async def start(status=200, **kwargs):
        server = await HttpServer(status, answer=kwargs.pop("answer", True)).start(**kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.mark.asyncio
async def test_tcp_probe_passes_on_a_listening_port(http_server):
    server = await http_server()

    assert await probe(HealthCheckSpec(timeout=2), "127.0.0.1", server.port) == (
        True,
        "ok (TCP connect)",
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["tcp", "http", "https"])
async def test_probe_of_a_closed_port_is_refused(protocol):
    result = await probe(HealthCheckSpec(protocol=protocol, timeout=2), "127.0.0.1", closed_port())

    assert result == (False, "connection refused")


@pytest.mark.asyncio
async def test_http_probe_passes_on_200_and_sends_host_and_path(http_server):
    server = await http_server(200)
    spec = HealthCheckSpec(
        protocol="http", path="/chat/index.html", domain="www.elb.com", timeout=2
    )

    assert await probe(spec, "127.0.0.1", server.port) == (True, "ok (HTTP 200)")

    request = server.requests[0]
    assert request.startswith(b"GET /chat/index.html HTTP/1.1\r\n")
    assert b"\r\nHost: www.elb.com\r\n" in request


@pytest.mark.asyncio
async def test_http_probe_without_domain_sends_the_backend_address(http_server):
    server = await http_server(204)
    spec = HealthCheckSpec(protocol="http", expected_codes=("204",), timeout=2)

    assert await probe(spec, "127.0.0.1", server.port) == (True, "ok (HTTP 204)")
    assert b"\r\nHost: 127.0.0.1\r\n" in server.requests[0]


@pytest.mark.asyncio
async def test_http_probe_fails_on_an_unexpected_status(http_server):
    server = await http_server(500)
    spec = HealthCheckSpec(protocol="http", expected_codes=("http_2xx",), timeout=2)

    assert await probe(spec, "127.0.0.1", server.port) == (False, "HTTP 500 not in http_2xx")


@pytest.mark.asyncio
async def test_probe_uses_the_check_port_instead_of_the_server_port(http_server):
    server = await http_server(200)
    spec = HealthCheckSpec(protocol="http", port=server.port, timeout=2)

    assert await probe(spec, "127.0.0.1", closed_port()) == (True, "ok (HTTP 200)")


@pytest.mark.asyncio
async def test_probe_of_a_server_that_never_answers_times_out(http_server):
    server = await http_server(answer=False)
    spec = HealthCheckSpec(protocol="http", timeout=0.2)

    assert await probe(spec, "127.0.0.1", server.port) == (False, "timeout after 0.2s")
    assert len(server.requests) == 1


@pytest.mark.asyncio
async def test_http_probe_of_something_that_is_not_http():
    async def banner(reader, writer):
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        await writer.drain()
        writer.close()

    async def silent_close(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    spec = HealthCheckSpec(protocol="http", timeout=2)
    results = []
    for handler in (banner, silent_close):
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        async with server:
            results.append(await probe(spec, "127.0.0.1", server.sockets[0].getsockname()[1]))

    assert results == [
        (False, "invalid HTTP response"),
        (False, "connection closed before response"),
    ]


@pytest.fixture(scope="module")
def backend_tls():
    # A self-signed-style backend: its CA is trusted by nobody, as on most real backends.
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("backend.internal").configure_cert(context)
    return context


@pytest.mark.asyncio
async def test_https_probe_does_not_verify_the_backend_certificate(http_server, backend_tls):
    server = await http_server(200, ssl_context=backend_tls)
    spec = HealthCheckSpec(protocol="https", domain="www.elb.com", timeout=2)

    assert await probe(spec, "127.0.0.1", server.port) == (True, "ok (HTTP 200)")
    assert b"\r\nHost: www.elb.com\r\n" in server.requests[0]


@pytest.mark.asyncio
async def test_https_probe_of_a_plain_text_server_reports_the_tls_failure():
    async def plain_text(reader, writer):
        writer.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(plain_text, "127.0.0.1", 0)
    async with server:
        ok, reason = await probe(
            HealthCheckSpec(protocol="https", timeout=2),
            "127.0.0.1",
            server.sockets[0].getsockname()[1],
        )

    assert not ok
    assert reason.startswith("TLS handshake failed: ")


def test_probes_behave_the_same_on_uvloop(backend_tls):
    # The dataplane runs on uvloop; the other tests run on the default loop.
    async def scenario():
        plain = await HttpServer(200).start()
        tls = await HttpServer(503).start(ssl_context=backend_tls)
        silent = await HttpServer(answer=False).start()
        try:
            return [
                await probe(HealthCheckSpec(timeout=2), "127.0.0.1", plain.port),
                await probe(HealthCheckSpec(protocol="http", timeout=2), "127.0.0.1", plain.port),
                await probe(HealthCheckSpec(protocol="https", timeout=2), "127.0.0.1", tls.port),
                await probe(
                    HealthCheckSpec(protocol="http", timeout=0.2), "127.0.0.1", silent.port
                ),
                await probe(HealthCheckSpec(timeout=2), "127.0.0.1", closed_port()),
            ]
        finally:
            for server in (plain, tls, silent):
                await server.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        results = runner.run(asyncio.wait_for(scenario(), WAIT_LIMIT))

    assert results == [
        (True, "ok (TCP connect)"),
        (True, "ok (HTTP 200)"),
        (False, "HTTP 503 not in http_2xx,http_3xx"),
        (False, "timeout after 0.2s"),
        (False, "connection refused"),
    ]


# HealthChecker loop


async def wait_until(condition, what):
    async with asyncio.timeout(WAIT_LIMIT):
        while not condition():
            await asyncio.sleep(0.01)
    assert condition(), what


@pytest.mark.asyncio
async def test_checker_marks_a_killed_backend_down_and_brings_it_back(http_server):
    server = await http_server(200)
    port = server.port
    backends = [Backend("srv-a", "127.0.0.1", port), Backend("srv-b", "127.0.0.1", closed_port())]
    changes = []
    spec = HealthCheckSpec(
        protocol="http", interval=0.05, timeout=0.5, healthy_threshold=2, unhealthy_threshold=2
    )
    checker = HealthChecker(spec, backends, on_change=lambda b: changes.append((b.id, b.healthy)))
    checker.start()
    try:
        await wait_until(lambda: not backends[1].healthy, "dead server marked down")
        await wait_until(lambda: backends[0].last_check is not None, "live server checked")
        assert backends[0].healthy
        assert backends[0].health_reason == "ok (HTTP 200)"
        assert backends[1].health_reason == "connection refused"

        await server.stop()
        await wait_until(lambda: not backends[0].healthy, "killed server marked down")
        assert backends[0].health_reason == "connection refused"

        await http_server(200, port=port)
        await wait_until(lambda: backends[0].healthy, "returned server marked up")
        assert backends[0].health_reason == "ok (HTTP 200)"
    finally:
        await checker.stop()

    assert changes == [("srv-b", False), ("srv-a", False), ("srv-a", True)]
    assert checker.state(backends[1]).failures >= 2


@pytest.mark.asyncio
async def test_checker_keeps_checking_when_the_change_callback_fails(http_server):
    backend = Backend("srv-a", "127.0.0.1", closed_port())
    spec = HealthCheckSpec(interval=0.02, timeout=0.5, unhealthy_threshold=1)
    calls = []

    def broken_callback(changed):
        calls.append(changed)
        raise RuntimeError("callback bug")

    checker = HealthChecker(spec, [backend], on_change=broken_callback)
    checker.start()
    try:
        await wait_until(lambda: calls, "callback called")
        await wait_until(lambda: checker.state(backend).failures >= 3, "checks continue")
    finally:
        await checker.stop()

    assert not backend.healthy


@pytest.mark.asyncio
async def test_checker_stamps_checks_with_its_clock(http_server):
    server = await http_server(200)
    backend = Backend("srv-a", "127.0.0.1", server.port)
    checker = HealthChecker(HealthCheckSpec(timeout=2), [backend], clock=lambda: 1234.5)

    assert await checker.check_once(backend) is False

    assert (backend.healthy, backend.health_reason, backend.last_check) == (
        True,
        "ok (TCP connect)",
        1234.5,
    )


@pytest.mark.asyncio
async def test_stop_ends_every_check_task():
    backends = [Backend(f"srv-{n}", "127.0.0.1", closed_port()) for n in range(3)]
    checker = HealthChecker(HealthCheckSpec(interval=0.05, timeout=0.5), backends)
    checker.start()
    tasks = [task for task in asyncio.all_tasks() if task.get_name().startswith("health-check")]
    assert len(tasks) == 3

    await checker.stop()

    assert all(task.done() for task in tasks)
