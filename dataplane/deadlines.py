"""One timer for the deadlines of every connection and stream of a listener.

A connection's idle, request and response timeouts each need a check at some moment. A loop timer
per connection costs as much to make and cancel as a tenth of the whole request it guards (uvloop
allocates a handle and a libuv timer for each), so the listener keeps one: deadlines are rounded
up to the next tick of 1/64 s and grouped by tick, and the loop timer is set for the earliest tick
that has an owner waiting. A deadline is checked up to one tick late and never early.

An owner's deadline moving later costs nothing: its check runs at the earlier tick and watches
again for the rest, as HTTP/1.1's connection timer always did.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from typing import Any

log = logging.getLogger(__name__)

TICKS_PER_SECOND = 64
# uvloop counts its timers in whole milliseconds and can fire up to one early.
_EARLY_FIRE = 0.001


class Deadlines:
    """Owners (connections, streams) watched for their `_check_deadline()`, by tick."""

    __slots__ = ("armed", "loop", "slots", "ticks", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # The owners waiting on each tick, and the ticks in order (a heap; a tick whose owners
        # all left stays until it passes).
        self.slots: dict[int, set[Any]] = {}
        self.ticks: list[int] = []
        self.timer: asyncio.TimerHandle | None = None
        # The tick the loop timer is set for: 0 while there is none, -1 while it fires.
        self.armed = 0

    def watch(self, owner: Any, when: float) -> int:
        """Run owner._check_deadline() once, at `when` or less than a tick after it. Returns the
        tick, which the owner hands to `forget` if it no longer needs the check."""
        tick = int(when * TICKS_PER_SECOND) + 1
        slot = self.slots.get(tick)
        if slot is None:
            slot = self.slots[tick] = set()
            heapq.heappush(self.ticks, tick)
            armed = self.armed
            if armed == 0 or tick < armed:
                self._arm(tick)
        slot.add(owner)
        return tick

    def forget(self, owner: Any, tick: int) -> None:
        slot = self.slots.get(tick)
        if slot is not None:
            slot.discard(owner)

    def _arm(self, tick: int) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.armed = tick
        self.timer = self.loop.call_at(tick / TICKS_PER_SECOND + _EARLY_FIRE, self._fire)

    def _fire(self) -> None:
        self.timer = None
        # Watches made by the checks below do not arm the timer: an earlier tick may be waiting.
        self.armed = -1
        now_tick = int(self.loop.time() * TICKS_PER_SECOND)
        ticks = self.ticks
        slots = self.slots
        # A check that watches again lands on a later tick than now_tick: the loop ends.
        while ticks and ticks[0] <= now_tick:
            owners = slots.pop(heapq.heappop(ticks), None)
            if not owners:
                continue
            for owner in owners:
                try:
                    owner._check_deadline()
                except Exception:
                    # One owner's failure must not leave the others of its tick unchecked.
                    log.exception("deadline check of %r failed", owner)
        self.armed = 0
        if ticks:
            self._arm(ticks[0])
