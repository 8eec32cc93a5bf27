"""Active health checks of backend servers: TCP connect, HTTP and HTTPS GET.

A server is taken out of rotation after `unhealthy_threshold` consecutive failed checks and put
back after `healthy_threshold` consecutive successes (seed 004). The state machine is kept apart
from the I/O so thresholds can be tested with a fake clock.

Each check ends with a reason code from `REASON_CODES` beside its human text, so the console and
the metrics can say why a server is down without parsing messages. A server's state also keeps the
wall-clock time its health last flipped and a bounded ring of its recent checks (time, passed,
code) for the console's timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from dataplane.balancing import Backend

if TYPE_CHECKING:
    from dataplane.slowstart import SlowStart

log = logging.getLogger(__name__)

PROTOCOLS = ("tcp", "http", "https")
STATUS_CLASSES = ("http_1xx", "http_2xx", "http_3xx", "http_4xx", "http_5xx")

# A status line longer than this is not HTTP; it also bounds what a broken server can make us read.
_MAX_STATUS_LINE = 1024

# Why a check passed or failed, as a bounded enum-like string (the text beside it has the details).
OK = "ok"
REFUSED = "refused"
TIMEOUT = "timeout"
STATUS_MISMATCH = "status_mismatch"
TLS_FAILURE = "tls_failure"
RESET = "reset"
INVALID_RESPONSE = "invalid_response"
CONNECT_FAILED = "connect_failed"
REASON_CODES = (
    OK,
    REFUSED,
    TIMEOUT,
    STATUS_MISMATCH,
    TLS_FAILURE,
    RESET,
    INVALID_RESPONSE,
    CONNECT_FAILED,
)

# Recent checks kept per server for the console's timeline.
HISTORY = 20


class CheckResult(NamedTuple):
    """One check's outcome: passed or not, the text for people, the code for machines, and the
    HTTP status the server answered (HTTP and HTTPS checks that got one)."""

    ok: bool
    reason: str
    code: str
    status: int | None = None


# Probes that report only (passed, text) (the checks here and the UDP check answer a
# CheckResult with its code): this check's own texts mapped to a code.
_TEXT_CODES = (
    ("connection refused", REFUSED),
    ("timeout after", TIMEOUT),
    ("connection reset", RESET),
    ("TLS handshake failed", TLS_FAILURE),
    ("invalid HTTP response", INVALID_RESPONSE),
)


def code_of(ok: bool, reason: str) -> str:
    """The reason code of a result that came without one."""
    if ok:
        return OK
    for prefix, code in _TEXT_CODES:
        if reason.startswith(prefix):
            return code
    return CONNECT_FAILED


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
    """Consecutive-result counter that decides when a server flips between healthy and not, with
    what the console shows about it: the last reason code, when the health last changed (wall
    clock) and the recent checks."""

    __slots__ = (
        "changed_at",
        "code",
        "failures",
        "healthy",
        "healthy_threshold",
        "history",
        "last_check",
        "reason",
        "status",
        "successes",
        "unhealthy_threshold",
    )

    def __init__(
        self,
        healthy_threshold: int,
        unhealthy_threshold: int,
        *,
        healthy: bool = True,
        since: float | None = None,
    ) -> None:
        self.healthy_threshold = healthy_threshold
        self.unhealthy_threshold = unhealthy_threshold
        self.healthy = healthy
        self.successes = 0
        self.failures = 0
        self.reason = ""
        self.code = ""
        self.status: int | None = None
        self.last_check: float | None = None
        # Wall-clock time the current health began: when checking started, or the last flip.
        self.changed_at = time.time() if since is None else since
        # (wall time, passed, code) of the most recent checks, oldest first.
        self.history: deque[tuple[float, bool, str]] = deque(maxlen=HISTORY)

    def record(
        self,
        ok: bool,
        reason: str,
        now: float,
        *,
        code: str | None = None,
        status: int | None = None,
        wall: float | None = None,
    ) -> bool:
        """Count one check result; returns True when the server's health flipped."""
        wall = time.time() if wall is None else wall
        self.reason = reason
        self.code = code or code_of(ok, reason)
        self.status = status
        self.last_check = now
        self.history.append((wall, ok, self.code))
        flipped = False
        if ok:
            self.failures = 0
            self.successes += 1
            if not self.healthy and self.successes >= self.healthy_threshold:
                self.healthy = flipped = True
        else:
            self.successes = 0
            self.failures += 1
            if self.healthy and self.failures >= self.unhealthy_threshold:
                self.healthy = False
                flipped = True
        if flipped:
            self.changed_at = wall
        return flipped

    def adopt(self, before: HealthState) -> None:
        """Carry what was seen of the same server under the same check over from the last
        snapshot: the counts towards a flip, the reason, the last change and the timeline."""
        self.healthy = before.healthy
        self.successes = before.successes
        self.failures = before.failures
        self.reason = before.reason
        self.code = before.code
        self.status = before.status
        self.last_check = before.last_check
        self.changed_at = before.changed_at
        self.history.extend(before.history)


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


async def _http_status(spec: HealthCheckSpec, address: str, port: int) -> CheckResult:
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
        return CheckResult(False, "connection closed before response", INVALID_RESPONSE)
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return CheckResult(False, "invalid HTTP response", INVALID_RESPONSE)
    status = int(parts[1])
    if not 100 <= status <= 999:
        return CheckResult(False, "invalid HTTP response", INVALID_RESPONSE)
    if spec.accepts(status):
        return CheckResult(True, f"ok (HTTP {status})", OK, status)
    expected = ",".join(spec.expected_codes)
    return CheckResult(False, f"HTTP {status} not in {expected}", STATUS_MISMATCH, status)


async def _tcp_connect(spec: HealthCheckSpec, address: str, port: int) -> CheckResult:
    _, writer = await asyncio.open_connection(address, port)
    writer.transport.abort()
    return CheckResult(True, "ok (TCP connect)", OK)


async def check(spec: HealthCheckSpec, address: str, port: int) -> CheckResult:
    """Run one check against a server: passed or not, why in words and as a reason code."""
    target_port = spec.port or port
    run = _tcp_connect if spec.protocol == "tcp" else _http_status
    try:
        return await asyncio.wait_for(run(spec, address, target_port), spec.timeout)
    except TimeoutError:
        return CheckResult(False, f"timeout after {float(spec.timeout)}s", TIMEOUT)
    except ConnectionRefusedError:
        return CheckResult(False, "connection refused", REFUSED)
    except ConnectionResetError:
        return CheckResult(False, "connection reset", RESET)
    except ssl.SSLError as exc:
        return CheckResult(False, f"TLS handshake failed: {exc.reason or exc}", TLS_FAILURE)
    except ValueError:
        # StreamReader raises ValueError when the status line exceeds the read limit.
        return CheckResult(False, "invalid HTTP response", INVALID_RESPONSE)
    except OSError as exc:
        return CheckResult(False, f"connection failed: {exc.strerror or exc}", CONNECT_FAILED)


async def probe(spec: HealthCheckSpec, address: str, port: int) -> tuple[bool, str]:
    """Run one check against a server; returns (passed, reason for the status page)."""
    result = await check(spec, address, port)
    return result.ok, result.reason


class HealthChecker:
    """Checks every backend of one server group periodically and updates its health fields."""

    __slots__ = (
        "_backends",
        "_clock",
        "_on_change",
        "_probe",
        "_states",
        "_tasks",
        "_wall_clock",
        "spec",
    )

    def __init__(
        self,
        spec: HealthCheckSpec,
        backends: list[Backend],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_change: Callable[[Backend], None] | None = None,
        probe: Callable[[Any, str, int], Awaitable[tuple[Any, ...]]] = check,
    ) -> None:
        self.spec = spec
        self._backends = list(backends)
        self._clock = clock
        # Times people read (last change, the timeline) are wall-clock times.
        self._wall_clock = wall_clock
        self._on_change = on_change
        # Another kind of check (dataplane.udp_health) brings its own probe and spec; a probe
        # answers a CheckResult, or (passed, reason) whose code is then read from the reason.
        self._probe = probe
        started = wall_clock()
        self._states = {
            id(backend): HealthState(
                spec.healthy_threshold,
                spec.unhealthy_threshold,
                healthy=backend.checked_healthy,
                since=started,
            )
            for backend in self._backends
        }
        self._tasks: list[asyncio.Task[None]] = []

    def state(self, backend: Backend) -> HealthState:
        """The counters behind a backend's health, for status pages."""
        return self._states[id(backend)]

    def adopt(self, previous: HealthChecker) -> None:
        """Keep what the previous checker of this group saw of the servers still in it (same id,
        address and port), when the snapshot changed the group but not its health check."""
        before = {
            (backend.id, backend.address, backend.port): previous.state(backend)
            for backend in previous._backends
        }
        for backend in self._backends:
            state = before.get((backend.id, backend.address, backend.port))
            if state is not None:
                self._states[id(backend)].adopt(state)

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
        result = await self._probe(self.spec, backend.address, backend.port)
        ok, reason = bool(result[0]), str(result[1])
        code = result[2] if len(result) > 2 else code_of(ok, reason)
        status = result[3] if len(result) > 3 else None
        state = self._states[id(backend)]
        flipped = state.record(
            ok, reason, self._clock(), code=code, status=status, wall=self._wall_clock()
        )
        backend.checked_healthy = state.healthy
        # A server ejected by the passive checks stays out until its time is up.
        backend.healthy = state.healthy and not backend.ejected
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


def server_report(
    backend: Backend,
    checker: HealthChecker | None,
    slow_start: SlowStart | None,
    now: float,
    *,
    timeline: bool = True,
) -> dict[str, object]:
    """What a status document says of one server's health beyond healthy and reason: the reason
    code, the HTTP status a check saw, when its health last changed (wall clock), its recent
    checks as [time, passed, code] oldest first (left out without ``timeline``), and its
    slow-start ramp in percent (None when it is not ramping)."""
    percent = None
    if slow_start is not None and backend.ramp_started is not None and backend.weight > 0:
        fraction = slow_start.fraction(backend, now)
        if fraction < 1.0:
            percent = int(fraction * 100)
    if checker is None:
        report: dict[str, object] = {
            "reason_code": None,
            "http_status": None,
            "last_change": None,
            "slow_start_percent": percent,
        }
        if timeline:
            report["checks"] = []
        return report
    state = checker.state(backend)
    report = {
        "reason_code": state.code or None,
        "http_status": state.status,
        "last_change": round(state.changed_at, 3),
        "slow_start_percent": percent,
    }
    if timeline:
        report["checks"] = [[round(at, 3), ok, code] for at, ok, code in state.history]
    return report
