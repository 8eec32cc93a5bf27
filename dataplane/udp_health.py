"""UDP health checks: send a request datagram, expect a reply within the timeout.

UDP has no handshake, so the check is an exchange: the probe sends the configured request payload
from a connected socket and passes when any reply arrives (or, when an expected response is
configured, a reply containing it). A closed port answers with ICMP port unreachable, which the
kernel reports on the connected socket: the check fails at once with "port unreachable". Silence
until the timeout fails too; the thresholds absorb the odd lost datagram.

`HealthChecker` runs these probes unchanged: it is built with `probe=udp_probe` and a
`UdpHealthCheckSpec`, which carries the interval, timeout and thresholds it reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass

from dataplane.health import (
    CONNECT_FAILED,
    INVALID_RESPONSE,
    OK,
    REFUSED,
    TIMEOUT,
    CheckResult,
)

# Seed-style limits for the request and expected response (printable text in the console).
MAX_PAYLOAD = 512


@dataclass(frozen=True, slots=True)
class UdpHealthCheckSpec:
    """How one UDP server group is checked; thresholds and timing as for TCP checks."""

    port: int | None = None
    request: bytes = b""
    # Empty: any reply passes.
    expected: bytes = b""
    interval: float = 5.0
    timeout: float = 2.0
    healthy_threshold: int = 3
    unhealthy_threshold: int = 3
    protocol: str = "udp"

    def __post_init__(self) -> None:
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ValueError("health check port must be 1-65535")
        if len(self.request) > MAX_PAYLOAD or len(self.expected) > MAX_PAYLOAD:
            raise ValueError(f"UDP health check payloads are at most {MAX_PAYLOAD} bytes")
        if self.interval <= 0 or self.timeout <= 0:
            raise ValueError("health check interval and timeout must be positive")
        if self.healthy_threshold < 1 or self.unhealthy_threshold < 1:
            raise ValueError("health check thresholds must be at least 1")


class _ReplyWaiter(asyncio.DatagramProtocol):
    """Resolves a future with the first reply, or with the ICMP error the kernel reports."""

    def __init__(self, reply: asyncio.Future[bytes]) -> None:
        self.reply = reply

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc or ConnectionError("socket closed"))


async def _exchange(spec: UdpHealthCheckSpec, address: str, port: int) -> bytes:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(address, port, type=socket.SOCK_DGRAM)
    family, _, _, _, target = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.connect(target)
        # Sent on the socket itself: asyncio's sendto silently skips an empty datagram, and an
        # empty request is a valid (and the default) UDP check.
        sock.send(spec.request)
    except OSError:
        sock.close()
        raise
    reply: asyncio.Future[bytes] = loop.create_future()
    transport, _ = await loop.create_datagram_endpoint(lambda: _ReplyWaiter(reply), sock=sock)
    try:
        return await reply
    finally:
        transport.abort()
        if not reply.done():
            reply.cancel()
        # Consume an exception nobody awaited, so asyncio does not log it.
        with contextlib.suppress(BaseException):
            reply.exception()


async def udp_probe(spec: UdpHealthCheckSpec, address: str, port: int) -> CheckResult:
    """Run one UDP check against a server: passed or not, why in words and as a reason code."""
    target_port = spec.port or port
    try:
        data = await asyncio.wait_for(_exchange(spec, address, target_port), spec.timeout)
    except TimeoutError:
        return CheckResult(False, f"no reply within {float(spec.timeout)}s", TIMEOUT)
    except ConnectionRefusedError:
        return CheckResult(False, "port unreachable", REFUSED)
    except OSError as exc:
        return CheckResult(False, f"UDP check failed: {exc.strerror or exc}", CONNECT_FAILED)
    if spec.expected and spec.expected not in data:
        return CheckResult(False, "reply does not contain the expected response", INVALID_RESPONSE)
    return CheckResult(True, f"ok (UDP reply, {len(data)} bytes)", OK)
