"""Passive health checks (outlier detection): servers judged by the traffic they serve.

Where active checks (dataplane.health) probe a server every few seconds, a passive check watches
the requests and connections the proxies already send it, as Envoy's outlier detection and
HAProxy's `observe layer7` do, so a failing server leaves the rotation before the next probe
notices. Per server group (`ServerGroup.passive_health_check`):

- a failure is a 5xx response head from the server (HTTP, HTTPS and QUIC listeners, HTTP/2 and
  HTTP/3 streams), the node's own 504 when the server did not answer within the response timeout,
  the node's own 502 when the server closed or broke the exchange before a response head, or a
  connection to it that could not be opened (HTTP listeners and TCP / TCP SSL listeners alike).
  Any other response head, or (TCP) an opened connection, is a success and resets the count.
  A gRPC call is judged once its status is known, as an HTTP status (dataplane.protocols.grpc:
  a 5xx head, or a grpc-status in FAILED_CALL, is a failure). UDP listeners report nothing: a
  datagram has no outcome to observe;
- after `consecutive_failures` failures in a row the server is ejected: it gets no new request
  or connection (its `healthy` flag, which every pick reads, is cleared) until its time is up,
  then it returns by itself. Requests in flight on it finish;
- the ejection lasts `base_ejection_time` times the number of times the server has been ejected
  (as Envoy), capped at `max_ejection_time`. That multiplier decays by one for every base
  ejection time the server spends back in service, so a server that stayed well for long starts
  again at the base time;
- never more than `max_ejection_percent` of the group's in-service servers (state Enabled) are
  ejected at once: a server whose ejection would exceed it stays in (fail open, as ALB routes to
  every target when too many fail), and its failures keep counting, so it is ejected on its next
  failure once another server has returned. The percentage is strict: there is no "at least one"
  exception as in Envoy, so a group needs enough servers for one to fit (2 at 50%, the default;
  a single-server group only at 100%), and the last server is never taken out unless 100% says so.

A server must be both healthy by its active checks and not ejected to be picked. Ejection is
per dataplane process: each worker judges the traffic it serves (each sees its own share of the
failures), as each runs its own active checks. State is bounded by the group's servers: one
small record per server, one timer per ejected server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dataplane.balancing import Backend
    from dataplane.config import PassiveHealthCheck

log = logging.getLogger(__name__)

# What ejected a server, as a bounded code beside the text (status documents, the console).
FIVE_XX = "5xx"
CONNECT = "connect"
MIXED = "mixed"


def _call_later(delay: float, callback: Callable[..., None], *args: Any) -> asyncio.TimerHandle:
    return asyncio.get_running_loop().call_later(delay, callback, *args)


class _Record:
    """What the detector knows of one server."""

    __slots__ = (
        "code",
        "connect",
        "ejections",
        "failures",
        "handle",
        "multiplier",
        "reason",
        "returned_at",
        "until",
        "until_wall",
    )

    def __init__(self) -> None:
        # The current run of consecutive failures, and how many of them were connect failures.
        self.failures = 0
        self.connect = 0
        # Ejections in a row that count towards the next one's length (decays while in service),
        # and every ejection since the node started (a counter for /metrics).
        self.multiplier = 0
        self.ejections = 0
        self.returned_at: float | None = None
        # While ejected: when it returns (monotonic and wall clock), why, and the return timer.
        self.until: float | None = None
        self.until_wall: float | None = None
        self.reason = ""
        self.code = ""
        self.handle: Any = None


class OutlierDetector:
    """The passive health checks of one server group, fed by every listener that uses it."""

    __slots__ = (
        "_call_later",
        "_clock",
        "_records",
        "_wall_clock",
        "base",
        "ejected",
        "maximum",
        "percent",
        "threshold",
    )

    def __init__(
        self,
        config: PassiveHealthCheck,
        backends: list[Backend],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        call_later: Callable[..., Any] = _call_later,
    ) -> None:
        self.threshold = config.consecutive_failures
        self.base = float(config.base_ejection_time)
        self.maximum = float(config.max_ejection_time)
        self.percent = config.max_ejection_percent
        self._clock = clock
        self._wall_clock = wall_clock
        # Schedules a server's return: the loop's call_later, a fake one in unit tests.
        self._call_later = call_later
        # Keyed by the Backend object itself: an outcome of a server of another generation's
        # group (a request in flight across a reload) finds no record and is ignored.
        self._records: dict[Backend, _Record] = {backend: _Record() for backend in backends}
        self.ejected = 0

    # -- outcomes, from the proxies ----------------------------------------------------------------

    def observe(self, backend: Backend | None, status: int) -> None:
        """A response head from ``backend`` (or the node's own 502/504 for it)."""
        record = self._records.get(backend)  # type: ignore[arg-type]
        if record is None:
            return
        if status < 500:
            record.failures = 0
            record.connect = 0
        else:
            self._failed(backend, record, connect=False)  # type: ignore[arg-type]

    def success(self, backend: Backend) -> None:
        """A connection to ``backend`` opened (TCP listeners)."""
        record = self._records.get(backend)
        if record is not None:
            record.failures = 0
            record.connect = 0

    def connect_failed(self, backend: Backend) -> None:
        """A connection to ``backend`` could not be opened."""
        record = self._records.get(backend)
        if record is not None:
            self._failed(backend, record, connect=True)

    def _failed(self, backend: Backend, record: _Record, *, connect: bool) -> None:
        if record.until is not None or backend.state != "enabled":
            # Already out (a request that was in flight), or leaving the group anyway.
            return
        record.failures += 1
        if connect:
            record.connect += 1
        if record.failures >= self.threshold:
            self._eject(backend, record)

    # -- ejection and return -------------------------------------------------------------------

    def _room(self) -> bool:
        serving = sum(1 for backend in self._records if backend.state == "enabled")
        return (self.ejected + 1) * 100 <= self.percent * serving

    def _eject(self, backend: Backend, record: _Record) -> None:
        if not self._room():
            # Fail open: too much of the group is out already. The failures keep counting.
            return
        now = self._clock()
        if record.returned_at is not None and record.multiplier:
            # One step down per base ejection time spent back in service.
            steps = int((now - record.returned_at) // self.base)
            record.multiplier = max(0, record.multiplier - steps)
        record.multiplier += 1
        record.ejections += 1
        duration = min(self.base * record.multiplier, self.maximum)
        failures, connect = record.failures, record.connect
        if connect == 0:
            record.code = FIVE_XX
            record.reason = f"passive: {failures} consecutive 5xx"
        elif connect == failures:
            record.code = CONNECT
            record.reason = f"passive: {failures} consecutive connect failures"
        else:
            record.code = MIXED
            record.reason = (
                f"passive: {failures} consecutive failures "
                f"({failures - connect} 5xx, {connect} connect)"
            )
        record.failures = record.connect = 0
        self._take_out(backend, record, now + duration, self._wall_clock() + duration, duration)
        log.info(
            "server %s (%s:%d) ejected for %.0f s: %s",
            backend.id,
            backend.address,
            backend.port,
            duration,
            record.reason,
            extra={"backend_id": backend.id},
        )

    def _take_out(
        self, backend: Backend, record: _Record, until: float, until_wall: float, left: float
    ) -> None:
        record.until = until
        record.until_wall = until_wall
        record.handle = self._call_later(left, self._return, backend)
        self.ejected += 1
        backend.ejected = True
        backend.healthy = False

    def _return(self, backend: Backend) -> None:
        record = self._records.get(backend)
        if record is None or record.until is None:
            return
        record.until = record.until_wall = None
        record.handle = None
        record.returned_at = self._clock()
        self.ejected -= 1
        backend.ejected = False
        # Back in rotation only if the active checks also find it healthy.
        backend.healthy = backend.checked_healthy
        log.info(
            "server %s (%s:%d) returns after its ejection (%s)",
            backend.id,
            backend.address,
            backend.port,
            record.reason,
            extra={"backend_id": backend.id},
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def adopt(self, previous: OutlierDetector) -> None:
        """Carry over what the previous detector of this group saw of the servers still in it
        (same id, address and port) when a snapshot rebuilt the group: the counts, and an
        ejection still under way, which keeps its time of return."""
        before = {(b.id, b.address, b.port): (b, r) for b, r in previous._records.items()}
        now = self._clock()
        for backend, record in self._records.items():
            found = before.get((backend.id, backend.address, backend.port))
            if found is None:
                continue
            old = found[1]
            record.failures, record.connect = old.failures, old.connect
            record.multiplier, record.ejections = old.multiplier, old.ejections
            record.returned_at, record.reason, record.code = old.returned_at, old.reason, old.code
            if old.until is not None and old.until_wall is not None and backend.state == "enabled":
                left = old.until - now
                if left > 0:
                    self._take_out(backend, record, old.until, old.until_wall, left)

    def stop(self) -> None:
        """Cancel the return timers; this detector's group is no longer served."""
        for record in self._records.values():
            if record.handle is not None:
                record.handle.cancel()
                record.handle = None

    # -- status ----------------------------------------------------------------------------------

    def report(self, backend: Backend) -> dict[str, object]:
        """What a status document says of one server's passive checks: whether it is ejected
        and how often it was; while ejected, why (text and code), its time of return (wall
        clock) and the seconds left until then."""
        record = self._records.get(backend)
        if record is None:
            return {}
        report: dict[str, object] = {"ejected": False, "ejections": record.ejections}
        if record.until is not None and record.until_wall is not None:
            report["ejected"] = True
            report["ejection_reason"] = record.reason
            report["ejection_code"] = record.code
            report["ejected_until"] = round(record.until_wall, 3)
            report["ejection_seconds_left"] = round(max(0.0, record.until - self._clock()), 1)
        return report


def passive_report(backend: Backend, detector: OutlierDetector | None) -> dict[str, object]:
    """A server's passive-check fields for the node's status; none for a group without passive
    checks, so its status entries stay as small as before."""
    if detector is None:
        return {}
    return detector.report(backend)
