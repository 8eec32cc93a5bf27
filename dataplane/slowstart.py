"""Slow start: a backend server that joins or recovers gets a linearly growing share of traffic.

Seed 002 (backend server group, "Slow Start"): disabled by default; when enabled, "the load
balancer linearly increases the proportion of requests to send to backend servers in this mode.
When the slow start duration elapses, the load balancer sends full share of requests to backend
servers and exits the slow start mode." "Slow Start Duration": 30 to 1200 seconds, default 30.

What this module decides where the seed is silent:

- A server is in slow start from the moment it joins a running server group or comes back from
  unhealthy, for `duration` seconds. Its effective weight is `weight x elapsed / duration`, so its
  share of requests grows linearly from nothing to its full weight, and then slow start ends.
- Servers present when a listener first starts are not in slow start: they all begin together, so
  ramping them would change nothing but the first seconds of an empty listener (HAProxy's
  slowstart works the same way).
- The effective weight never drops below one unit of `WEIGHT_SCALE`, so a server that is the only
  one left still gets the traffic instead of the group answering 503.
- Recovery is seen two ways: `on_health_change` (wired as the HealthChecker's `on_change`) starts
  the ramp at the moment the server flips to healthy, and the schedulers notice a flip on their
  next pick in case nobody called it. The state lives on the `Backend`, so every listener that
  shares the server group sees the same ramp.
- Only weighted round robin and weighted least connections apply it (seed 002 ties slow start to
  weights); round robin ignores weights and source IP hash must not move clients, so both ignore
  it.

Weights inside a slow-start scheduler are scaled by `WEIGHT_SCALE` so a ramp of weight 1 still
has a thousand steps while the arithmetic stays in integers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from dataplane.balancing import Backend

MIN_DURATION: Final = 30
MAX_DURATION: Final = 1200
DEFAULT_DURATION: Final = 30
WEIGHT_SCALE: Final = 1000


class SlowStart:
    """The slow-start setting of one server group, with the clock its ramps are measured on."""

    __slots__ = ("clock", "duration")

    def __init__(
        self, duration: float = DEFAULT_DURATION, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not MIN_DURATION <= duration <= MAX_DURATION:
            raise ValueError(
                f"slow start duration {duration} is out of range {MIN_DURATION}-{MAX_DURATION} s"
            )
        self.duration = float(duration)
        self.clock = clock

    def begin(self, backend: Backend) -> None:
        """Start the ramp now: for a server that joins a running group, or one that recovered."""
        backend.ramp_started = self.clock()
        backend.seen_healthy = backend.healthy

    def on_health_change(self, backend: Backend) -> None:
        """HealthChecker `on_change` hook: a flip to healthy starts the ramp at once."""
        if backend.healthy:
            self.begin(backend)
        else:
            backend.seen_healthy = False
            backend.ramp_started = None

    def weight(self, backend: Backend, now: float) -> int:
        """The backend's weight at `now`, in units of WEIGHT_SCALE; 0 for weight 0.

        Also notices a recovery nobody reported (healthy now, unhealthy at the last look) and
        starts the ramp then.
        """
        healthy = backend.healthy
        if healthy != backend.seen_healthy:
            backend.seen_healthy = healthy
            backend.ramp_started = now if healthy else None
        full = backend.weight * WEIGHT_SCALE
        started = backend.ramp_started
        if started is None or full <= 0:
            return full
        elapsed = now - started
        if elapsed >= self.duration:
            backend.ramp_started = None
            return full
        if elapsed <= 0:
            return 1
        return max(int(full * elapsed / self.duration), 1)

    def fraction(self, backend: Backend, now: float) -> float:
        """How far along its ramp a backend is, 0.0 to 1.0 (1.0 when not in slow start)."""
        started = backend.ramp_started
        if started is None:
            return 1.0
        return min(max((now - started) / self.duration, 0.0), 1.0)
