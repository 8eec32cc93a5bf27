"""Bandwidth throttling for listeners: a token bucket and a writer that keeps a stream under it.

Seed 000 ("Bandwidth Throttling for Listeners"): each listener may get a maximum bandwidth in
Mbit/s, and the listeners of an instance together may not exceed the instance's bandwidth; a
listener given no share of a fully allocated instance is inaccessible. The console checks the sum
and warns; the dataplane enforces each listener's own limit with one `TokenBucket` shared by every
connection of the listener, and when the instance has a bandwidth, the listeners without a limit of
their own share one bucket holding what the others' limits leave of it.

How it is enforced here:

- The bucket holds up to `burst_bytes` and refills at `rate_bytes_per_s`. Taking more than it holds
  is allowed and leaves it in debt; `take()` answers how long the debt takes to pay off. Bytes
  already read from a socket are therefore never held back or split (no buffering, no copies);
  instead the *source* of the bytes stops being read until the debt is paid. Over any window the
  bytes sent are at most rate x time + burst + the last chunk written.
- `ThrottledWriter` does that for one direction of one connection: every write goes straight to
  the client (a transport, or an HTTP/2 or HTTP/3 stream) and is charged to the bucket; when the
  bucket is in debt it calls the connection's `pause_reading` for the other side and schedules
  `resume_reading` with `loop.call_later`, checking the bucket again when the timer fires,
  because other connections of the listener may have spent the refill meanwhile.
- Datagram listeners have no source to pause: a UDP datagram the client should get while the
  bucket is in debt is dropped (`TokenBucket.admit`), as a policer on a router does; QUIC's own
  congestion control treats such losses as congestion. HTTP/3 response bodies are shaped at the
  source instead, like TCP: the relay waits out the debt before reading the backend again.
- Mbit here is 10^6 bits, as cloud bandwidth is billed.

What it costs, counted for metrics (`GET /v1/status` and `/metrics`): each bucket counts its
`pauses` (a source paused, or a `pay()` made to wait, because the bucket was in debt) and
`paused_seconds` (how long those sources stayed paused, added up over the connections, so N
connections paused for a second add N seconds). Both are bumped only where a pause begins or ends,
never on a write within budget. A bucket shared by several listeners counts for all of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

# Burst of a listener's bucket: what a connection may send at once after an idle spell. A tenth of
# a second of the rate keeps short measurements close to the limit, and the floor lets one TLS
# record (16 KiB) through without a pause on the slowest limits.
BURST_SECONDS: Final = 0.1
MIN_BURST_BYTES: Final = 16 * 1024


def mbit_to_bytes_per_s(mbit_per_s: float) -> float:
    """Mbit/s (10^6 bits per second) to bytes per second."""
    return mbit_per_s * 1_000_000 / 8


def burst_for(rate_bytes_per_s: float) -> float:
    """The standard burst of a bucket with this rate."""
    return max(rate_bytes_per_s * BURST_SECONDS, MIN_BURST_BYTES)


class TokenBucket:
    """A byte budget that refills at a constant rate, up to a burst."""

    __slots__ = (
        "_clock",
        "_stamp",
        "_tokens",
        "burst_bytes",
        "paused_seconds",
        "pauses",
        "rate_bytes_per_s",
    )

    def __init__(
        self,
        rate_bytes_per_s: float,
        burst_bytes: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_bytes_per_s <= 0:
            raise ValueError(f"rate must be above 0 bytes/s, not {rate_bytes_per_s}")
        if burst_bytes <= 0:
            raise ValueError(f"burst must be above 0 bytes, not {burst_bytes}")
        self.rate_bytes_per_s = float(rate_bytes_per_s)
        self.burst_bytes = float(burst_bytes)
        self._clock = clock
        # A new listener may send its burst at once.
        self._tokens = self.burst_bytes
        self._stamp = clock()
        # What the limit cost, for metrics: sources paused (or senders made to wait) because the
        # bucket was in debt, and the seconds they stayed paused (summed over connections).
        self.pauses = 0
        self.paused_seconds = 0.0

    @classmethod
    def for_mbit(
        cls, mbit_per_s: float, *, clock: Callable[[], float] = time.monotonic
    ) -> TokenBucket:
        """The bucket for a listener limit in Mbit/s, with the standard burst."""
        rate = mbit_to_bytes_per_s(mbit_per_s)
        return cls(rate, burst_for(rate), clock=clock)

    def set_rate(self, rate_bytes_per_s: float) -> None:
        """Change the rate (and the standard burst with it) in place, keeping the balance.

        For a bucket several listeners hold, whose rate follows the others' limits.
        """
        if rate_bytes_per_s <= 0:
            raise ValueError(f"rate must be above 0 bytes/s, not {rate_bytes_per_s}")
        self.take(0)  # settle the refill earned at the old rate
        self.rate_bytes_per_s = float(rate_bytes_per_s)
        self.burst_bytes = burst_for(self.rate_bytes_per_s)
        self._tokens = min(self._tokens, self.burst_bytes)

    def take(self, n: int) -> float:
        """Charge n bytes; seconds to wait before sending more (0.0 when within budget).

        `take(0)` asks for the wait without charging anything.
        """
        now = self._clock()
        elapsed = now - self._stamp
        tokens = self._tokens
        if elapsed > 0:
            self._stamp = now
            tokens += elapsed * self.rate_bytes_per_s
            tokens = min(tokens, self.burst_bytes)
        tokens -= n
        self._tokens = tokens
        # Less than a byte owed is float rounding of the refill, not debt: a timer that fired on
        # time must see the debt paid rather than wait again for a few nanoseconds.
        if tokens > -1.0:
            return 0.0
        return -tokens / self.rate_bytes_per_s

    def pause_began(self) -> float:
        """Count a source paused (or a sender made to wait) for debt; the time to give back to
        `pause_ended` when it goes on. Only called while in debt, never on the budget path."""
        self.pauses += 1
        return self._clock()

    def pause_ended(self, began: float) -> None:
        """Add the spell of a pause that `pause_began` counted to `paused_seconds`."""
        self.paused_seconds += self._clock() - began

    def admit(self, n: int) -> bool:
        """Police one datagram of n bytes: charge it and say yes, or say no while in debt.

        A yes may leave the bucket in debt by at most this datagram, so over any window the bytes
        admitted are at most rate x time + burst + one datagram.
        """
        if self.take(0) > 0.0:
            return False
        self._tokens -= n
        return True


async def pay(bucket: TokenBucket, n: int) -> None:
    """Charge n bytes sent, then wait until the bucket is out of debt.

    For a coroutine that produces the bytes itself: waiting here is pausing the source.
    """
    wait = bucket.take(n)
    if wait <= 0.0:
        return
    began = bucket.pause_began()
    try:
        while wait > 0.0:
            await asyncio.sleep(wait)
            # Other connections of the listener may have spent the refill meanwhile.
            wait = bucket.take(0)
    finally:
        bucket.pause_ended(began)


def _no_source() -> None:
    """What a closed writer pauses and resumes: its connection is gone."""


def _no_sink(data: bytes) -> None:
    """Where a closed writer's bytes go: its connection is gone."""


class ThrottledWriter:
    """Writes one direction of a connection through a listener's bucket.

    The writes themselves are never delayed: when the bucket goes into debt, the side that
    produces the data (the backend for responses, the client for requests) is paused through
    `pause_reading` and resumed through `resume_reading` once the debt is paid. The callbacks are
    the connection's own, so it can combine this reason to pause with its other ones.
    """

    __slots__ = ("_bucket", "_handle", "_loop", "_pause", "_resume", "_send", "_since")

    def __init__(
        self,
        send: Callable[[bytes], None],
        bucket: TokenBucket,
        *,
        pause_reading: Callable[[], None],
        resume_reading: Callable[[], None],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        # Where the bytes go: a transport's write, or an HTTP/2 or HTTP/3 stream's body.
        self._send = send
        self._bucket = bucket
        self._pause = pause_reading
        self._resume = resume_reading
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        # When the current pause began, on the bucket's clock (meaningful while `_handle` is set).
        self._since = 0.0

    @property
    def paused(self) -> bool:
        """Is the producing side paused for bandwidth right now?"""
        return self._handle is not None

    def write(self, data: bytes) -> None:
        self._send(data)
        wait = self._bucket.take(len(data))
        if wait > 0.0 and self._handle is None:
            self._begin_pause(wait)

    def _begin_pause(self, wait: float) -> None:
        # Only while the bucket is in debt: a write within budget never gets here.
        self._pause()
        self._since = self._bucket.pause_began()
        self._handle = self._loop.call_later(wait, self._check)

    def _check(self) -> None:
        # Other connections of the listener may have spent the refill since the timer was set.
        wait = self._bucket.take(0)
        if wait > 0.0:
            self._handle = self._loop.call_later(wait, self._check)
            return
        self._handle = None
        self._bucket.pause_ended(self._since)
        self._resume()

    def close(self) -> None:
        """Cancel a pending resume; call when the connection is lost."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._bucket.pause_ended(self._since)
        # The callbacks are bound methods of the connection (or of its stream), which holds this
        # writer: without them a closed connection is freed by reference counting, not left to
        # the cycle collector.
        self._pause = self._resume = _no_source
        self._send = _no_sink
