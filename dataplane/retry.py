"""Retries to another server, and the retry budget that keeps them from amplifying an outage.

What is retried (dataplane.protocols.exchange decides, with `retryable_answer` below):
- a failed connect, whatever the method: nothing was sent, and the request body (if any) is still
  held by the node, since it only streams to a backend once a connection is attached;
- a 502 or 503 answer from the backend, for idempotent methods (RFC 9110 9.2.2: GET, HEAD,
  OPTIONS, TRACE, PUT, DELETE) without a request body only. The node does not keep a body once it
  streamed to a backend, so a request that had one cannot be sent again; a body of unknown length
  (chunked, or an HTTP/2 or HTTP/3 stream still open after its head) counts as one.
- gRPC calls (dataplane.protocols.grpc) are retried on a failed connect only: each is a POST
  whose messages are not kept once streamed.

Each retry goes to a server of the same route not tried yet for this request (`pick_untried`), at
most the listener's `retries` times (0-3); retries=0 turns every retry off, connect failures
included. A retried 502/503 never reaches the client: its backend connection is closed rather than
pooled (its response was not read to its end), and the client gets the last attempt's answer or
the node's own 502.

The budget (`RetryBudget`): per listener and per worker process, retries may be at most
`retry_budget_percent` of the client requests seen over a sliding window of WINDOW_SECONDS, plus a
floor of MIN_RETRIES_PER_SECOND so that a quiet listener can still retry (Linkerd's retry budget
has the same two knobs: retryRatio and minRetriesPerSecond). When it is spent the request is not
retried: the client gets the failure, and the refusal is counted. Each worker keeps its own
budget, and the ratio holds whatever share of the traffic a worker gets; the floor is per worker,
so a node with N workers allows N times the floor.

The budget reads the listener's request counter (ListenerStats.requests), which the proxy bumps
anyway, only when a retry is considered: a request that does not fail costs it nothing. Requests
count from the first retry considered in the window's oldest second onwards, so at the start of
an outage the budget undercounts (it errs toward fewer retries, never more). Its memory is one
entry per second of the window.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dataplane.balancing import Backend
    from dataplane.protocols import ListenerSettings, Route

# RFC 9110 9.2.2: methods whose intended effect is the same however many times they are sent.
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
# Backend answers that say "this server could not serve it", not "this request is wrong".
RETRY_STATUSES = frozenset({502, 503})
# The sliding window the percentage applies to, and the floor (per worker process).
WINDOW_SECONDS = 10
MIN_RETRIES_PER_SECOND = 3


class RetryBudget:
    """Allows a retry while retries stay within `percent` of the requests of the last `window`
    seconds, or within `min_per_second` in the current second."""

    __slots__ = ("clock", "min_per_second", "percent", "seconds", "window")

    def __init__(
        self,
        percent: int,
        *,
        window: int = WINDOW_SECONDS,
        min_per_second: int = MIN_RETRIES_PER_SECOND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.percent = percent
        self.window = window
        self.min_per_second = min_per_second
        self.clock = clock
        # One entry per second in which a retry was considered, oldest first: [the second, the
        # request counter before the request of its first retry, retries allowed in it].
        self.seconds: collections.deque[list[int]] = collections.deque()

    def allow(self, requests: int) -> bool:
        """Whether one more retry may go now; `requests` is the listener's request counter
        (it only grows). An allowed retry is counted."""
        now = int(self.clock())
        seconds = self.seconds
        oldest = now - self.window
        while seconds and seconds[0][0] <= oldest:
            seconds.popleft()
        if not seconds or seconds[-1][0] != now:
            # The request this retry is for counts in the window too.
            seconds.append([now, requests - 1, 0])
        current = seconds[-1]
        retries = sum(entry[2] for entry in seconds)
        in_window = requests - seconds[0][1]
        if current[2] < self.min_per_second or retries * 100 < self.percent * in_window:
            current[2] += 1
            return True
        return False


def retryable_answer(method: bytes, has_body: bool) -> bool:
    """Whether a request may go again after a 502 or 503 answer (see the module docstring)."""
    return not has_body and method in IDEMPOTENT_METHODS


def pick_untried(route: Route, client_ip: str | None, tried: Sequence[Backend]) -> Backend | None:
    """A server of the route not tried yet for this request, or None.

    The route's scheduler picks first, leaving out the server that failed last, so the retry is
    spread as any request is. Schedulers leave out one server only; when their pick was tried
    already (with three tries, or a client-IP hash that lands on the same server again), the
    first eligible server not tried is taken, in the group's order.
    """
    backend = route.pick(client_ip, exclude=tried[-1])
    if backend is None or backend not in tried:
        return backend
    scheduler = route.scheduler
    if scheduler is None:
        return None
    for candidate in scheduler.backends:
        # What every scheduler checks (an ejected server is not `healthy` either).
        if candidate.weight > 0 and candidate.healthy and candidate not in tried:
            return candidate
    return None


def next_server(
    settings: ListenerSettings,
    route: Route,
    client_ip: str | None,
    tried: list[Backend] | None,
    failed: Backend,
) -> tuple[Backend | None, list[Backend] | None]:
    """The server to send a request to instead of `failed`, when the listener's retries and its
    budget allow one more, and the servers tried with `failed` added (the request keeps them).
    None: no retry; counted when it is the budget that refused."""
    if len(tried or ()) >= settings.retries:
        return None, tried
    tried = [failed] if tried is None else [*tried, failed]
    other = pick_untried(route, client_ip, tried)
    if other is None:
        return None, tried
    stats = settings.stats
    if not settings.retry_budget.allow(stats.requests):
        stats.retries_refused += 1
        return None, tried
    stats.retries += 1
    return other, tried
