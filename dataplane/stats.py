"""Per-listener traffic counters, reported by GET /v1/status.

Plain integer attributes bumped from the hot path: no locks (one event loop) and no per-event
allocation. A listener keeps its counters across generations; they reset only when the listener
is removed.

Latencies go into fixed-bucket histograms (`Histogram`). The hot path only appends a duration
to the histogram's `pending` list (one C call, no lookup); `fold` sorts what gathered and counts
every bucket with one bisect per bound, and adds the sum with math.fsum, all in C. The node folds
every second and before each status report, so `pending` holds at most about a second of
requests. Measured with callgrind, this costs half of a bisect and two increments per request.
The status document carries the buckets cumulatively, the way Prometheus reads them, so
workers' histograms add up bucket by bucket.
"""

from __future__ import annotations

import math
import ssl
import weakref
from bisect import bisect_right
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dataplane.retry import RetryBudget

# Upper bounds in seconds, Prometheus-style: from 5 ms (a local backend) to 10 s (a request
# timeout's worth); slower answers land in the +Inf bucket.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# TLS handshake failure reasons kept apart; OpenSSL's reason codes are a bounded set, but a
# label must not grow without end whatever a client makes OpenSSL say.
MAX_TLS_REASONS = 32


class Histogram:
    """Observations counted per bucket (not cumulative here), and those not yet counted."""

    __slots__ = ("counts", "pending", "sum")

    def __init__(self) -> None:
        # One slot per bound, and the last for everything above the largest bound.
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        # Durations in seconds appended by the hot path, counted by `fold`.
        self.pending: list[float] = []

    def observe(self, seconds: float) -> None:
        self.pending.append(seconds)

    def fold(self) -> None:
        """Count the pending observations into the buckets and the sum."""
        pending = self.pending
        if not pending:
            return
        pending.sort()
        counts = self.counts
        below = 0
        for index, bound in enumerate(BUCKETS):
            # Prometheus buckets are "less than or equal to" their bound.
            upto = bisect_right(pending, bound, below)
            counts[index] += upto - below
            below = upto
        counts[-1] += len(pending) - below
        self.sum += math.fsum(pending)
        pending.clear()

    def as_dict(self) -> dict[str, object]:
        """Cumulative counts per bound (the +Inf bucket is `count`), as Prometheus has them."""
        self.fold()
        cumulative = []
        running = 0
        for count in self.counts[:-1]:
            running += count
            cumulative.append(running)
        return {
            "buckets": list(BUCKETS),
            "counts": cumulative,
            "sum": self.sum,
            "count": running + self.counts[-1],
        }


class ListenerStats:
    __slots__ = (
        "active_connections",
        "backend_response_time",
        "bytes_in",
        "bytes_out",
        "denied_connections",
        "request_duration",
        "requests",
        "responses",
        "retries",
        "retries_refused",
        "retry_budget",
        "throttled_by_rule",
        "throttled_requests",
        "tls_failures",
        "tls_handshakes",
        "total_connections",
    )

    def __init__(self) -> None:
        self.active_connections = 0
        self.total_connections = 0
        self.denied_connections = 0
        # HTTP: requests received; TCP: connections proxied.
        self.requests = 0
        # Bytes received from clients and sent to clients.
        self.bytes_in = 0
        self.bytes_out = 0
        # Indexed by status // 100; slot 0 is unused, so a 5xx lands in responses[5].
        self.responses = [0, 0, 0, 0, 0, 0]
        # HTTP: requests sent again to another server, and retries the budget refused
        # (dataplane.retry). The budget lives here, as the counters do: per listener and worker
        # process, kept across generations (ListenerSettings sets it up).
        self.retries = 0
        self.retries_refused = 0
        self.retry_budget: RetryBudget | None = None
        # HTTP: requests answered 429 by a QPS per client IP limit (dataplane.throttle), all of
        # them, and those of each rule's own limit by rule id (rules gone are forgotten).
        self.throttled_requests = 0
        self.throttled_by_rule: dict[str, int] = {}
        # HTTP: from a request's first byte to the end of its response (or the node's answer).
        self.request_duration = Histogram()
        # From sending the request on to a server to the first byte of its response head.
        self.backend_response_time = Histogram()
        # TLS listeners: handshakes completed, and failures by OpenSSL's reason code.
        self.tls_handshakes = 0
        self.tls_failures: dict[str, int] = {}

    def fold(self) -> None:
        """Count the latencies the hot path gathered (see `Histogram`)."""
        self.request_duration.fold()
        self.backend_response_time.fold()

    def tls_failed(self, reason: str) -> None:
        failures = self.tls_failures
        if reason not in failures and len(failures) >= MAX_TLS_REASONS:
            reason = "other"
        failures[reason] = failures.get(reason, 0) + 1

    def as_dict(self) -> dict[str, object]:
        responses = self.responses
        return {
            "active_connections": self.active_connections,
            "total_connections": self.total_connections,
            "denied_connections": self.denied_connections,
            "requests": self.requests,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "responses": {f"{n}xx": responses[n] for n in range(1, 6)},
            "retries": self.retries,
            "retries_refused": self.retries_refused,
            "throttled_requests": self.throttled_requests,
            "throttled_by_rule": dict(self.throttled_by_rule),
            "request_duration": self.request_duration.as_dict(),
            "backend_response_time": self.backend_response_time.as_dict(),
            "tls_handshakes": self.tls_handshakes,
            "tls_handshake_failures": dict(self.tls_failures),
        }


def tls_failure_reason(exc: BaseException) -> str:
    """A bounded label for why a handshake failed: OpenSSL's reason code, lower-cased."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason and len(reason) <= 64:
        return reason.lower()
    return "other"


def add_histograms(mine: dict[str, object], other: dict[str, object]) -> None:
    """Add one status document's histogram (as `Histogram.as_dict` gives it) into another."""
    if mine.get("buckets") != other.get("buckets"):
        return
    mine["counts"] = [a + b for a, b in zip(mine["counts"], other["counts"], strict=True)]  # type: ignore[call-overload]
    mine["sum"] = mine["sum"] + other["sum"]  # type: ignore[operator]
    mine["count"] = mine["count"] + other["count"]  # type: ignore[operator]


# TLS contexts by the counters of the listener serving them: a failed handshake reaches
# `handshake_failed` with only its SSLObject, whose context says which listener it was for.
# Listeners with identical TLS material share one context, and count on the last one set.
_tls_contexts: weakref.WeakKeyDictionary[ssl.SSLContext, ListenerStats] = (
    weakref.WeakKeyDictionary()
)


def count_handshakes(contexts: Iterable[ssl.SSLContext], stats: ListenerStats) -> None:
    """Count the failed handshakes of these contexts (front and SNI) in `stats`."""
    for context in contexts:
        _tls_contexts[context] = stats


def handshake_failed(ssl_object: ssl.SSLObject, exc: BaseException) -> None:
    """Called by dataplane.tls when OpenSSL refuses a client's handshake."""
    stats = _tls_contexts.get(ssl_object.context)
    if stats is not None:
        stats.tls_failed(tls_failure_reason(exc))
