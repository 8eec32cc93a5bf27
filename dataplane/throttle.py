"""Throttling by QPS per client IP (seeds 001/003): a listener-wide limit and one per rule.

Seeds 001 and 003 name throttling "based on QPS per client IP" and say it uses the client IP that
Retrieve Client IP settles. The proxy (dataplane.protocols.http, the same code for HTTP/1.1,
HTTP/2 and HTTP/3 requests) asks the listener's `QpsLimiter` right after it settles the client
IP, and a matching rule's limiter before the rule's action runs. A request over a limit is
answered 429 Too Many Requests with `Retry-After`, counted in the listener's counters and logged
with the termination "throttled"; it never reaches a server.

Algorithm: GCRA (the generic cell rate algorithm), which is a token bucket kept as one number per
address. A limit of N per second lets a client send N requests at once (a page and its assets
fetched in parallel), then one every 1/N s; over a long run it gets N per second, and in any
one-second window at most 2N-1. The alternatives cost more for the same answer: a token bucket
stores tokens and a time per address, a sliding-window log stores every request's time (N floats
per address), and a fixed window lets 2N through across its boundary as well and needs the window
start besides the count. GCRA stores the "theoretical arrival time" (TAT) of the address's next
request: a request at `now` passes when TAT - now is within the burst tolerance, and then moves
TAT on by 1/N. A TAT in the past says nothing more than no entry at all, so an address idle for
one second (the whole burst earned back) can be forgotten at no cost to correctness.

Memory is bounded per limiter, whatever addresses arrive: the table is an OrderedDict in order of
last use. A new address first drops idle entries from the stale end, and when the table is full
the stalest entry goes (its client, if it comes back, starts with a full burst: the one way a
flood of addresses weakens the limit, never memory). A busy address is always at the fresh end,
so it is the last to go. About 170 bytes an entry: `MAX_ADDRESSES` (listener-wide) is about 11 MB
at worst, `MAX_RULE_ADDRESSES` (each rule) about 3 MB.

Sharing: each worker process keeps its own tables (nothing crosses processes on the request path),
and so does each node. A client whose connections land on several workers (SO_REUSEPORT spreads
them by the connection's addresses and ports) or on several nodes can get up to N per second from
each of them; one connection, and every request on it (keep-alive, HTTP/2 and HTTP/3 streams),
stays with one worker. docs/dataplane-config.md says so for operators.
"""

from __future__ import annotations

import collections
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dataplane.protocols import ListenerSettings

# Addresses tracked at most per limiter; see the module docstring for the memory they take.
MAX_ADDRESSES = 65_536
MAX_RULE_ADDRESSES = 16_384
# Idle entries dropped per new address at most: bounds the work one request can cause.
_PRUNE_PER_INSERT = 8


class QpsLimiter:
    """Requests per second per client IP, for one listener or one forwarding rule."""

    __slots__ = ("_interval", "_table", "_tolerance", "capacity", "qps")

    def __init__(self, qps: int, *, capacity: int = MAX_ADDRESSES) -> None:
        if qps < 1 or capacity < 1:
            raise ValueError("qps and capacity must be at least 1")
        self.qps = qps
        self.capacity = capacity
        self._interval = 1.0 / qps
        # A burst of `qps` requests: the last of them may arrive (qps - 1) intervals early (and a
        # nanosecond more, so that summing intervals in floats never refuses the last one).
        self._tolerance = (qps - 1) / qps + 1e-9
        # client IP -> theoretical arrival time of its next request, least recently used first
        self._table: collections.OrderedDict[str, float] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def admit(self, client_ip: str, now: float) -> int:
        """0 when a request from `client_ip` at `now` (monotonic seconds) may go on; otherwise
        the whole seconds to wait before the next one would pass (at least 1, for Retry-After)."""
        table = self._table
        tat = table.get(client_ip)
        if tat is None:
            if table:
                self._make_room(now)
            table[client_ip] = now + self._interval
            return 0
        # Refused or not, the address is in use: it must not be the next one evicted.
        table.move_to_end(client_ip)
        if tat <= now:
            # Idle long enough to have its whole burst back.
            table[client_ip] = now + self._interval
            return 0
        wait = tat - self._tolerance - now
        if wait > 0:
            return max(1, math.ceil(wait))
        table[client_ip] = tat + self._interval
        return 0

    def _make_room(self, now: float) -> None:
        """Before a new address: drop a few idle entries, and the stalest one when full."""
        table = self._table
        for _ in range(_PRUNE_PER_INSERT):
            if not table:
                return
            oldest = next(iter(table))
            if table[oldest] > now:
                break
            del table[oldest]
        while len(table) >= self.capacity:
            table.popitem(last=False)

    def take_over(self, old: QpsLimiter | None) -> None:
        """Keep the addresses an earlier generation's limiter of the same rate tracked, so a
        configuration change elsewhere hands no client a fresh burst."""
        if old is None or old is self or old.qps != self.qps:
            return
        self._table = old._table
        while len(self._table) > self.capacity:
            self._table.popitem(last=False)


def listener_limiter(qps: int | None) -> QpsLimiter | None:
    """The listener-wide limiter, or None (the proxy then pays one attribute test)."""
    return QpsLimiter(qps) if qps is not None else None


def rule_limiter(qps: int | None) -> QpsLimiter | None:
    """A forwarding rule's limiter, or None."""
    return QpsLimiter(qps, capacity=MAX_RULE_ADDRESSES) if qps is not None else None


def carry_over(old: ListenerSettings | None, new: ListenerSettings) -> None:
    """A new generation of a listener takes the old one's tables where a limit is unchanged (the
    listener-wide one, and each rule's by rule id), and its per-rule counters forget rules that
    are gone."""
    if old is None:
        return
    if new.throttle is not None:
        new.throttle.take_over(old.throttle)
    old_rules = old.rules.limiters if old.rules is not None else {}
    new_rules = new.rules.limiters if new.rules is not None else {}
    for rule_id, limiter in new_rules.items():
        limiter.take_over(old_rules.get(rule_id))
    counts = new.stats.throttled_by_rule
    for rule_id in [rule_id for rule_id in counts if rule_id not in new_rules]:
        del counts[rule_id]
