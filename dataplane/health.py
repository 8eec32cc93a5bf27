"""Active health checks of backend servers: TCP connect, HTTP and HTTPS GET.

A server is taken out of rotation after `unhealthy_threshold` consecutive failed checks and put
back after `healthy_threshold` consecutive successes (seed 004). The state machine is kept apart
from the I/O so thresholds can be tested with a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from dataplane.balancing import Backend

log = logging.getLogger(__name__)

PROTOCOLS = ("tcp", "http", "https")
STATUS_CLASSES = ("http_1xx", "http_2xx", "http_3xx", "http_4xx", "http_5xx")

# A status line longer than this is not HTTP; it also bounds what a broken server can make us read.
_MAX_STATUS_LINE = 1024


@dataclass(frozen=True, slots=True)
class HealthCheckSpec:
    """How one server group is checked. Defaults follow seed 004 (TCP SSL listener)."""

    protocol: str = "tcp"
    port: int | None = None
    domain: str | None = None
    path: str = "/"
    interval: float = 5.0
    timeout: float = 2.0
    healthy_threshold: int = 3
    unhealthy_threshold: int = 3
    expected_codes: tuple[str, ...] = ("http_2xx", "http_3xx")

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"health check protocol must be one of {PROTOCOLS}")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ValueError("health check port must be 1-65535")
        if not self.path.startswith("/") or any(c in self.path for c in " \r\n\t"):
            raise ValueError("health check path must start with / and contain no whitespace")
        if self.domain is not None and any(c in self.domain for c in " \r\n\t/"):
            raise ValueError("health check domain must be a host name")
        if self.interval <= 0 or self.timeout <= 0:
            raise ValueError("health check interval and timeout must be positive")
        if self.healthy_threshold < 1 or self.unhealthy_threshold < 1:
            raise ValueError("health check thresholds must be at least 1")
        if not self.expected_codes:
            raise ValueError("health check needs at least one expected status code")
        for code in self.expected_codes:
            if code not in STATUS_CLASSES and not (code.isdigit() and 100 <= int(code) <= 599):
                raise ValueError(f"unknown expected status code {code!r}")

    def accepts(self, status: int) -> bool:
        """True when an HTTP status is among the expected codes (classes or exact codes)."""
        status_class = f"http_{status // 100}xx"
        text = str(status)
        return any(code in (status_class, text) for code in self.expected_codes)


class HealthState:
    """Consecutive-result counter that decides when a server flips between healthy and not."""

    __slots__ = (
        "failures",
        "healthy",
        "healthy_threshold",
        "last_check",
        "reason",
        "successes",
        "unhealthy_threshold",
    )

    def __init__(
        self, healthy_threshold: int, unhealthy_threshold: int, *, healthy: bool = True
    ) -> None:
        self.healthy_threshold = healthy_threshold
        self.unhealthy_threshold = unhealthy_threshold
        self.healthy = healthy
        self.successes = 0
        self.failures = 0
        self.reason = ""
        self.last_check: float | None = None

    def record(self, ok: bool, reason: str, now: float) -> bool:
        """Count one check result; returns True when the server's health flipped."""
        self.reason = reason
        self.last_check = now
        if ok:
            self.failures = 0
            self.successes += 1
            if not self.healthy and self.successes >= self.healthy_threshold:
                self.healthy = True
                return True
        else:
            self.successes = 0
            self.failures += 1
            if self.healthy and self.failures >= self.unhealthy_threshold:
                self.healthy = False
                return True
        return False


@functools.cache
def _probe_tls_context() -> ssl.SSLContext:
    # Backends commonly run self-signed or internal certificates, and a health check asks "does it
    # answer", not "is it trusted", so the certificate is not verified. The security level is
    # lowered because seed 000 allows RSA 1024 keys, which OpenSSL 3 refuses by default.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("DEFAULT:@SECLEVEL=1")
    return context


def _host_header(spec: HealthCheckSpec, address: str) -> str:
    if spec.domain:
        return spec.domain
    return f"[{address}]" if ":" in address else address


async def _http_status(spec: HealthCheckSpec, address: str, port: int) -> tuple[bool, str]:
    tls = spec.protocol == "https"
    reader, writer = await asyncio.open_connection(
        address,
        port,
        ssl=_probe_tls_context() if tls else None,
        server_hostname=(spec.domain or "") if tls else None,
        limit=_MAX_STATUS_LINE,
    )
    try:
        request = (
            f"GET {spec.path} HTTP/1.1\r\n"
            f"Host: {_host_header(spec, address)}\r\n"
            "User-Agent: lb-health-check\r\n"
            "Accept: */*\r\n"
            "Connection: close\r\n\r\n"
        )
        writer.write(request.encode("latin-1"))
        line = await reader.readline()
    finally:
        # Only the status line matters; abort rather than wait for a graceful (TLS) close.
        writer.transport.abort()
    if not line:
        return False, "connection closed before response"
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return False, "invalid HTTP response"
    status = int(parts[1])
    if spec.accepts(status):
        return True, f"ok (HTTP {status})"
    return False, f"HTTP {status} not in {','.join(spec.expected_codes)}"


async def _tcp_connect(spec: HealthCheckSpec, address: str, port: int) -> tuple[bool, str]:
    _, writer = await asyncio.open_connection(address, port)
    writer.transport.abort()
    return True, "ok (TCP connect)"


async def probe(spec: HealthCheckSpec, address: str, port: int) -> tuple[bool, str]:
    """Run one check against a server; returns (passed, reason for the status page)."""
    target_port = spec.port or port
    check = _tcp_connect if spec.protocol == "tcp" else _http_status
    try:
        return await asyncio.wait_for(check(spec, address, target_port), spec.timeout)
    except TimeoutError:
        return False, f"timeout after {float(spec.timeout)}s"
    except ConnectionRefusedError:
        return False, "connection refused"
    except ConnectionResetError:
        return False, "connection reset"
    except ssl.SSLError as exc:
        return False, f"TLS handshake failed: {exc.reason or exc}"
    except ValueError:
        # StreamReader raises ValueError when the status line exceeds the read limit.
        return False, "invalid HTTP response"
    except OSError as exc:
        return False, f"connection failed: {exc.strerror or exc}"


class HealthChecker:
    """Checks every backend of one server group periodically and updates its health fields."""

    __slots__ = ("_backends", "_clock", "_on_change", "_probe", "_states", "_tasks", "spec")

    def __init__(
        self,
        spec: HealthCheckSpec,
        backends: list[Backend],
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[Backend], None] | None = None,
        probe: Callable[[Any, str, int], Awaitable[tuple[bool, str]]] = probe,
    ) -> None:
        self.spec = spec
        self._backends = list(backends)
        self._clock = clock
        self._on_change = on_change
        # Another kind of check (dataplane.udp_health) brings its own probe and spec.
        self._probe = probe
        self._states = {
            id(backend): HealthState(
                spec.healthy_threshold, spec.unhealthy_threshold, healthy=backend.healthy
            )
            for backend in self._backends
        }
        self._tasks: list[asyncio.Task[None]] = []

    def state(self, backend: Backend) -> HealthState:
        """The counters behind a backend's health, for status pages."""
        return self._states[id(backend)]

    def start(self) -> None:
        """Schedule one check loop per backend on the running event loop."""
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        for backend in self._backends:
            # Spread the first checks over one interval so many servers are not probed in a burst;
            # the loops run at a fixed rate afterwards, so they stay spread out.
            delay = random.uniform(0, self.spec.interval)
            task = loop.create_task(self._run(backend, delay), name=f"health-check {backend.id}")
            self._tasks.append(task)

    async def stop(self) -> None:
        """Cancel the check loops and wait until they have ended."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)

    async def check_once(self, backend: Backend) -> bool:
        """Probe one backend now and record the result; returns True when its health flipped."""
        ok, reason = await self._probe(self.spec, backend.address, backend.port)
        state = self._states[id(backend)]
        flipped = state.record(ok, reason, self._clock())
        backend.healthy = state.healthy
        backend.health_reason = reason
        backend.last_check = state.last_check
        if flipped:
            log.info(
                "backend %s is now %s: %s",
                backend.id,
                "healthy" if state.healthy else "unhealthy",
                reason,
                extra={"backend_id": backend.id},
            )
            if self._on_change is not None:
                self._on_change(backend)
        return flipped

    async def _run(self, backend: Backend, delay: float) -> None:
        loop = asyncio.get_running_loop()
        interval = self.spec.interval
        await asyncio.sleep(delay)
        next_check = loop.time()
        while True:
            try:
                await self.check_once(backend)
            except Exception:
                # probe() turns every network failure into a result; anything reaching here is a
                # bug (or a failing on_change callback), and must not stop checking this server.
                log.exception("health check of backend %s failed", backend.id)
            # Fixed rate: a slow probe does not stretch the interval, a late wake-up skips ahead.
            next_check += interval
            now = loop.time()
            next_check = max(next_check, now)
            await asyncio.sleep(next_check - now)
