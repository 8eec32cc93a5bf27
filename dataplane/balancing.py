"""Backend servers and the scheduling algorithms that pick one per connection or request.

Every scheduler skips servers that are unhealthy or have weight 0 (seed 000: "If the weight of a
backend server is set to 0, no request is distributed to the backend server"). Eligibility is read
live on each pick, so a health flip takes effect on the next request without rebuilding anything.

Weighted round robin and weighted least connections can take a `SlowStart` (seed 002): a server
that joins or recovers then counts with a weight that grows linearly over the ramp (see
dataplane.slowstart). Without one they run exactly as before, on the configured weights.

A server that is draining or in maintenance is not given to any scheduler at all
(`make_scheduler` leaves it out): a server's state only changes with a new snapshot, which builds
new schedulers, so the pick itself never has to look at it.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dataplane.slowstart import SlowStart

ALGORITHMS = (
    "weighted_round_robin",
    "round_robin",
    "weighted_least_connections",
    "source_ip_hash",
)


class Backend:
    """Runtime state of one backend server, shared by the scheduler, health checks and the proxy."""

    __slots__ = (
        "active",
        "address",
        "checked_healthy",
        "connect_failures",
        "drain_deadline",
        "ejected",
        "health_reason",
        "healthy",
        "id",
        "last_check",
        "port",
        "ramp_started",
        "requests",
        "seen_healthy",
        "state",
        "weight",
    )

    def __init__(
        self,
        id: str,
        address: str,
        port: int,
        weight: int = 100,
        *,
        state: str = "enabled",
        drain_deadline: float | None = None,
    ) -> None:
        self.id = id
        self.address = address
        self.port = port
        self.weight = weight
        # enabled, draining or maintenance (dataplane.config.SERVER_STATES); a draining server's
        # remaining connections are closed at drain_deadline (wall-clock seconds).
        self.state = state
        self.drain_deadline = drain_deadline
        # A new listener serves at once; health checks take it out of rotation if it is down.
        # `healthy` is what every pick reads: the active checks' verdict (`checked_healthy`) and
        # not ejected by the passive checks (dataplane.outlier), folded into one flag so the
        # pick pays nothing for passive checks.
        self.healthy = True
        self.checked_healthy = True
        self.ejected = False
        self.health_reason = ""
        self.last_check: float | None = None
        # Open connections (TCP) or in-flight requests (HTTP), maintained by the proxy.
        self.active = 0
        # Requests (HTTP), connections (TCP) or sessions (UDP) sent to it, and connections to
        # it that failed to open: plain counters for the node's status and /metrics.
        self.requests = 0
        self.connect_failures = 0
        # Slow start: when the current ramp began (None: full weight), and the health last seen
        # by a slow-start scheduler, so a recovery nobody reported still starts a ramp.
        self.ramp_started: float | None = None
        self.seen_healthy = True

    @property
    def in_service(self) -> bool:
        """Takes new requests and connections by its state (health and weight aside)."""
        return self.state == "enabled"

    @property
    def eligible(self) -> bool:
        return self.healthy and self.weight > 0 and self.state == "enabled"

    def adopt_state(self, before: Backend) -> None:
        """Carry health and slow-start state over from the same server in the last snapshot.
        An ejection is not carried here: the group's new OutlierDetector adopts it."""
        self.checked_healthy = before.checked_healthy
        self.healthy = before.checked_healthy
        self.health_reason = before.health_reason
        self.last_check = before.last_check
        self.ramp_started = before.ramp_started
        self.seen_healthy = before.seen_healthy

    def __repr__(self) -> str:
        state = "up" if self.healthy else "down"
        return f"<Backend {self.id} {self.address}:{self.port} w={self.weight} {state}>"


class Scheduler:
    """Picks a backend for a new connection or request; None means no server can take it."""

    __slots__ = ("backends",)

    def __init__(self, backends: list[Backend], slow_start: SlowStart | None = None) -> None:
        # Only the weighted schedulers use slow_start; it is accepted here so every scheduler
        # is built the same way.
        self.backends = list(backends)

    def pick(self, client_ip: str | None = None, exclude: Backend | None = None) -> Backend | None:
        raise NotImplementedError


class WeightedRoundRobin(Scheduler):
    """Smooth weighted round robin, as nginx does it.

    Each pick adds every eligible server's weight to its current weight, takes the server with the
    largest current weight and subtracts the total from it. Over one cycle each server is picked
    exactly weight times, and picks of a heavy server are spread out instead of bunched together.
    """

    __slots__ = ("_current", "_slow_start")

    def __init__(self, backends: list[Backend], slow_start: SlowStart | None = None) -> None:
        super().__init__(backends)
        self._current = [0] * len(self.backends)
        self._slow_start = slow_start

    def pick(self, client_ip: str | None = None, exclude: Backend | None = None) -> Backend | None:
        if self._slow_start is not None:
            return self._pick_ramped(self._slow_start, exclude)
        current = self._current
        best = -1
        best_weight = 0
        total = 0
        for i, backend in enumerate(self.backends):
            weight = backend.weight
            if weight <= 0 or not backend.healthy or backend is exclude:
                continue
            total += weight
            value = current[i] + weight
            current[i] = value
            if best < 0 or value > best_weight:
                best = i
                best_weight = value
        if best < 0:
            return None
        current[best] -= total
        return self.backends[best]

    def _pick_ramped(self, slow_start: SlowStart, exclude: Backend | None) -> Backend | None:
        # The same algorithm on effective weights; kept apart so the plain path stays as lean.
        now = slow_start.clock()
        current = self._current
        best = -1
        best_weight = 0
        total = 0
        for i, backend in enumerate(self.backends):
            weight = slow_start.weight(backend, now)
            if weight <= 0 or not backend.healthy or backend is exclude:
                continue
            total += weight
            value = current[i] + weight
            current[i] = value
            if best < 0 or value > best_weight:
                best = i
                best_weight = value
        if best < 0:
            return None
        current[best] -= total
        return self.backends[best]


class RoundRobin(Scheduler):
    """Plain rotation; weights only matter in that weight 0 takes no traffic."""

    __slots__ = ("_next",)

    def __init__(self, backends: list[Backend], slow_start: SlowStart | None = None) -> None:
        super().__init__(backends)
        self._next = 0

    def pick(self, client_ip: str | None = None, exclude: Backend | None = None) -> Backend | None:
        backends = self.backends
        count = len(backends)
        start = self._next
        for step in range(count):
            i = (start + step) % count
            backend = backends[i]
            if backend.weight > 0 and backend.healthy and backend is not exclude:
                self._next = (i + 1) % count
                return backend
        return None


class WeightedLeastConnections(Scheduler):
    """The server with the lowest active/weight ratio wins.

    Ties are common (every server idle between sequential requests), so they are broken by smooth
    weighted round robin among the tied servers; otherwise the first server would take all the
    traffic of a lightly loaded listener.
    """

    __slots__ = ("_current", "_effective", "_slow_start")

    def __init__(self, backends: list[Backend], slow_start: SlowStart | None = None) -> None:
        super().__init__(backends)
        self._current = [0] * len(self.backends)
        self._slow_start = slow_start
        # Effective weights of the current pick, reused so a ramped pick allocates nothing.
        self._effective = [0] * len(self.backends)

    def pick(self, client_ip: str | None = None, exclude: Backend | None = None) -> Backend | None:
        if self._slow_start is not None:
            return self._pick_ramped(self._slow_start, exclude)
        backends = self.backends
        # First pass: the lowest ratio, compared by cross-multiplying to stay in integers.
        low_active = -1
        low_weight = 1
        for backend in backends:
            weight = backend.weight
            if weight <= 0 or not backend.healthy or backend is exclude:
                continue
            if low_active < 0 or backend.active * low_weight < low_active * weight:
                low_active = backend.active
                low_weight = weight
        if low_active < 0:
            return None
        # Second pass: smooth WRR among the servers at that ratio.
        current = self._current
        best = -1
        best_weight = 0
        total = 0
        for i, backend in enumerate(backends):
            weight = backend.weight
            if weight <= 0 or not backend.healthy or backend is exclude:
                continue
            if backend.active * low_weight != low_active * weight:
                continue
            total += weight
            value = current[i] + weight
            current[i] = value
            if best < 0 or value > best_weight:
                best = i
                best_weight = value
        current[best] -= total
        return backends[best]

    def _pick_ramped(self, slow_start: SlowStart, exclude: Backend | None) -> Backend | None:
        # The same two passes on effective weights, computed once per pick.
        now = slow_start.clock()
        backends = self.backends
        effective = self._effective
        low_active = -1
        low_weight = 1
        for i, backend in enumerate(backends):
            weight = slow_start.weight(backend, now)
            if not backend.healthy or backend is exclude:
                weight = 0
            effective[i] = weight
            if weight <= 0:
                continue
            if low_active < 0 or backend.active * low_weight < low_active * weight:
                low_active = backend.active
                low_weight = weight
        if low_active < 0:
            return None
        current = self._current
        best = -1
        best_weight = 0
        total = 0
        for i, backend in enumerate(backends):
            weight = effective[i]
            if weight <= 0 or backend.active * low_weight != low_active * weight:
                continue
            total += weight
            value = current[i] + weight
            current[i] = value
            if best < 0 or value > best_weight:
                best = i
                best_weight = value
        current[best] -= total
        return backends[best]


def _ring_hash(data: bytes) -> int:
    # Python's hash() is salted per process; every dataplane node of an instance must send a
    # client to the same server, so the ring uses a stable hash.
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class SourceIpHash(Scheduler):
    """Consistent hashing of the client address on a ring of virtual nodes.

    Each server owns a number of points proportional to its weight. A client goes to the owner of
    the first point clockwise from the hash of its address; if that server is not eligible, the
    walk continues, so only the clients of a failed server move. Adding a server to N takes over
    about 1/(N+1) of the clients and leaves the rest where they were.
    """

    __slots__ = ("_fallback", "_owners", "_points")

    # Points per unit of weight: a weight-100 server gets 800 points, enough that each server's
    # share stays within a few percent of its weight, while a ring of 100 servers still builds in
    # well under a second.
    POINTS_PER_WEIGHT = 8

    def __init__(self, backends: list[Backend], slow_start: SlowStart | None = None) -> None:
        super().__init__(backends)
        ring: list[tuple[int, int]] = []
        for index, backend in enumerate(self.backends):
            points = max(backend.weight, 0) * self.POINTS_PER_WEIGHT
            key = backend.id.encode()
            ring.extend((_ring_hash(b"%s#%d" % (key, n)), index) for n in range(points))
        ring.sort()
        self._points = [point for point, _ in ring]
        self._owners = [self.backends[index] for _, index in ring]
        # Without a client address there is nothing to hash; spread such picks by weight.
        self._fallback = WeightedRoundRobin(self.backends)

    def pick(self, client_ip: str | None = None, exclude: Backend | None = None) -> Backend | None:
        if not client_ip:
            return self._fallback.pick(None, exclude)
        owners = self._owners
        count = len(owners)
        if not count:
            return None
        start = bisect_right(self._points, _ring_hash(client_ip.encode()))
        for step in range(count):
            backend = owners[(start + step) % count]
            if backend.weight > 0 and backend.healthy and backend is not exclude:
                return backend
        return None


_SCHEDULERS: dict[str, type[Scheduler]] = {
    "weighted_round_robin": WeightedRoundRobin,
    "round_robin": RoundRobin,
    "weighted_least_connections": WeightedLeastConnections,
    "source_ip_hash": SourceIpHash,
}


def make_scheduler(
    algorithm: str, backends: list[Backend], *, slow_start: SlowStart | None = None
) -> Scheduler:
    """Build the scheduler for a server group; raises ValueError for an unknown algorithm.

    `slow_start` applies to weighted round robin and weighted least connections only. Servers
    draining or in maintenance are left out: they get nothing new.
    """
    try:
        scheduler_class = _SCHEDULERS[algorithm]
    except KeyError:
        allowed = ", ".join(ALGORITHMS)
        raise ValueError(
            f"unknown scheduling algorithm {algorithm!r}; allowed: {allowed}"
        ) from None
    return scheduler_class([b for b in backends if b.state == "enabled"], slow_start)
