"""Throttling by QPS per client IP (seeds 001/003): a listener-wide limit and one per rule.

Seeds 001 and 003 name throttling "based on QPS per client IP" and say it uses the client IP that
Retrieve Client IP settles. The exchange (dataplane.protocols.exchange, the same code for
HTTP/1.1, HTTP/2 and HTTP/3 requests) asks the listener's `QpsLimiter` right after it settles the
client IP, and a matching rule's limiter before the rule's action runs. A request over a limit is
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

The key (`client_key`): an IPv4 client is counted by its address, an IPv6 client by its /64
prefix, and an IPv4-mapped IPv6 address (::ffff:192.0.2.1, how a dual-stack listener sees IPv4
clients) as the IPv4 address it carries. A /64 is the smallest block IPv6 hands one site (RFC
4291 interface identifiers, SLAAC, privacy addresses): one client holds 2^64 addresses, so keyed
by the full address it could send each request from a new one and never be limited, and fill the
table with a flood of them. The cost is that hosts sharing one /64 (one LAN, one ISP customer)
share one budget, as hosts behind one NAT share an IPv4 address. The prefix comes from
`socket.inet_pton`, which accepts every textual form (compressed, uppercase, leading zeros) at a
fraction of what an `ipaddress` object costs on the request path. No cache: the addresses that
most need keying (a client rotating through its /64) are the ones a cache would never hit.

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
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dataplane.protocols import ListenerSettings

# Addresses tracked at most per limiter; see the module docstring for the memory they take.
MAX_ADDRESSES = 65_536
MAX_RULE_ADDRESSES = 16_384
# Idle entries dropped per new address at most: bounds the work one request can cause.
_PRUNE_PER_INSERT = 8

# ::ffff:0:0/96, IPv4-mapped IPv6 addresses, packed and as the kernel writes them.
_MAPPED_PACKED = bytes(10) + b"\xff\xff"
_MAPPED_TEXT = "::ffff:"
_MAPPED_TEXT_LEN = len(_MAPPED_TEXT)


def client_key(client_ip: str) -> str:
    """What a client's requests are counted under: an IPv4 address as it is, an IPv6 address as
    its /64 prefix ("2001:0db8:0000:0001"), an IPv4-mapped IPv6 address as the IPv4 address it
    carries.

    Never raises: text that is no address is its own key (the proxy only passes the peer's
    address or one it parsed, so this is for robustness, not a case that happens).
    """
    if ":" not in client_ip:
        return client_ip
    if "." in client_ip and client_ip.startswith(_MAPPED_TEXT):
        # Every IPv4 client of a listener bound to "::" arrives like this, so it skips the parse
        # (the "." test first: cheaper than startswith, and it lets other IPv6 addresses by).
        tail = client_ip[_MAPPED_TEXT_LEN:]
        if ":" not in tail:
            return tail
    try:
        packed = inet_pton(AF_INET6, client_ip)
    except (OSError, ValueError):
        # ValueError: a NUL or a lone surrogate in the text. A zone index (fe80::1%eth0) is tried
        # only after a failure, so the common case pays nothing for it; it names a link, not another
        # address, as in dataplane.acl.parse_ip.
        address, percent, _ = client_ip.partition("%")
        if not percent:
            return client_ip
        try:
            packed = inet_pton(AF_INET6, address)
        except (OSError, ValueError):
            return client_ip
    if packed[:12] == _MAPPED_PACKED:
        return inet_ntop(AF_INET, packed[12:])
    # Text, not the packed bytes: one bytes key turns the table into a dict of mixed key types,
    # whose lookups are slower for every IPv4 client too. The colons keep it apart from IPv4 keys.
    return packed[:8].hex(":", 2)


class QpsLimiter:
    """Requests per second per client IP (an IPv6 client per /64, see `client_key`), for one
    listener or one forwarding rule."""

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
        # client_key() -> theoretical arrival time of its next request, least recently used first
        self._table: collections.OrderedDict[str, float] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def admit(self, client_ip: str, now: float) -> int:
        """0 when a request from `client_ip` at `now` (monotonic seconds) may go on; otherwise
        the whole seconds to wait before the next one would pass (at least 1, for Retry-After)."""
        # The test repeats client_key's first line so that IPv4 clients pay no call for it.
        key = client_key(client_ip) if ":" in client_ip else client_ip
        table = self._table
        tat = table.get(key)
        if tat is None:
            if table:
                self._make_room(now)
            table[key] = now + self._interval
            return 0
        # Refused or not, the address is in use: it must not be the next one evicted.
        table.move_to_end(key)
        if tat <= now:
            # Idle long enough to have its whole burst back.
            table[key] = now + self._interval
            return 0
        wait = tat - self._tolerance - now
        if wait > 0:
            return max(1, math.ceil(wait))
        table[key] = tat + self._interval
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
