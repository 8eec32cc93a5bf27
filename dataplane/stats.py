"""Per-listener traffic counters, reported by GET /v1/status.

Plain integer attributes bumped from the hot path: no locks (one event loop) and no per-event
allocation. A listener keeps its counters across generations; they reset only when the listener
is removed.

Latencies go into fixed-bucket histograms (`Histogram`): observing one costs a bisect and two
increments, and the status document carries the buckets cumulatively, the way Prometheus reads
them, so workers' histograms add up bucket by bucket.
"""

from __future__ import annotations

import ssl
import weakref
from bisect import bisect_left
from collections.abc import Iterable

# Upper bounds in seconds, Prometheus-style: from 5 ms (a local backend) to 10 s (a request
# timeout's worth); slower answers land in the +Inf bucket.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# TLS handshake failure reasons kept apart; OpenSSL's reason codes are a bounded set, but a
# label must not grow without end whatever a client makes OpenSSL say.
MAX_TLS_REASONS = 32


class Histogram:
    """Observations counted per bucket (not cumulative here: one increment per observation)."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        # One slot per bound, and the last for everything above the largest bound.
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds

    def as_dict(self) -> dict[str, object]:
        """Cumulative counts per bound (the +Inf bucket is `count`), as Prometheus has them."""
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
        "servers",
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
        # HTTP: from a request's first byte to the end of its response (or the node's answer).
        self.request_duration = Histogram()
        # From choosing a server to the first byte of its response head (HTTP only).
        self.backend_response_time = Histogram()
        # TLS listeners: handshakes completed, and failures by OpenSSL's reason code.
        self.tls_handshakes = 0
        self.tls_failures: dict[str, int] = {}
        # Per server id: [requests or connections sent to it, connect failures].
        self.servers: dict[str, list[int]] = {}

    def server(self, server_id: str) -> list[int]:
        """The [requests, connect failures] counters of one server (created on first use)."""
        counters = self.servers.get(server_id)
        if counters is None:
            counters = self.servers[server_id] = [0, 0]
        return counters

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
