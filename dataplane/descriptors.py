"""What a node does when its file descriptors run out.

Every proxied connection holds two descriptors (the client's socket and its backend's), so a flood
of clients can take all of them (RLIMIT_NOFILE). Left alone, the node would then accept nothing it
can use: libuv accepts and at once closes every waiting connection (its answer to EMFILE, which at
least never spins), the control API's included, and clients already accepted cannot reach their
backends.

The node holds back a small reserve of descriptors instead. When one runs out (found by a probe
once a second, or at once when a backend connection fails with EMFILE or ENFILE), it gives the
reserve back and stops accepting on its listeners: waiting clients stay in the kernel's accept
queue, while the control API, health checks and the connections already accepted have descriptors
to work with. It accepts again once the reserve can be taken back with room to spare, looking
after 0.1 s, then doubling up to every second. Each episode is logged once, not per connection.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# errno values that mean "no descriptor left", for the process or the whole system.
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE})
RESERVE = 32
# Free on top of the reserve before the listeners accept again.
HEADROOM = 32
PROBE_INTERVAL = 1.0
RETRY_FIRST = 0.1
RETRY_MAX = 1.0


def _open_spare() -> int:
    return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)


class DescriptorReserve:
    """Spare descriptors held back from the listeners, given back when descriptors run out."""

    def __init__(
        self, *, stop_accepting: Callable[[], None], start_accepting: Callable[[], None]
    ) -> None:
        self._stop_accepting = stop_accepting
        self._start_accepting = start_accepting
        self._spare: list[int] = []
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._delay = RETRY_FIRST
        self._since = 0.0
        self.exhausted = False

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take the reserve and start probing (once a listener accepts connections)."""
        if self._loop is not None:
            return
        self._loop = loop
        self._take(RESERVE)
        self._timer = loop.call_later(PROBE_INTERVAL, self._probe)

    def run_out(self) -> None:
        """Something failed for want of a descriptor: stop accepting for a while."""
        if self.exhausted or self._loop is None:
            return
        self.exhausted = True
        self._since = time.monotonic()
        self._give_back()
        log.warning(
            "out of file descriptors (limit %d): listeners stop accepting until some are free",
            resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        )
        self._stop_accepting()
        self._delay = RETRY_FIRST
        self._rearm(self._delay)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._give_back()
        self._loop = None

    # -- internals -------------------------------------------------------------------------------

    def _probe(self) -> None:
        self._timer = None
        if self.exhausted:
            self._recover()
            return
        try:
            os.close(_open_spare())
        except OSError as exc:
            if exc.errno not in EXHAUSTED:
                raise
            self.run_out()
            return
        self._rearm(PROBE_INTERVAL)

    def _recover(self) -> None:
        if self._take(RESERVE + HEADROOM):
            # Keep the reserve, give the headroom to the listeners.
            for fd in self._spare[RESERVE:]:
                os.close(fd)
            del self._spare[RESERVE:]
            self.exhausted = False
            log.info(
                "file descriptors free again after %.1f s: listeners accept again",
                time.monotonic() - self._since,
            )
            self._start_accepting()
            self._rearm(PROBE_INTERVAL)
            return
        self._give_back()
        self._delay = min(self._delay * 2, RETRY_MAX)
        self._rearm(self._delay)

    def _take(self, count: int) -> bool:
        """Hold `count` spare descriptors in all; False (holding none) when there are not enough."""
        try:
            while len(self._spare) < count:
                self._spare.append(_open_spare())
        except OSError as exc:
            if exc.errno not in EXHAUSTED:
                raise
            self._give_back()
            return False
        return True

    def _give_back(self) -> None:
        for fd in self._spare:
            os.close(fd)
        self._spare.clear()

    def _rearm(self, delay: float) -> None:
        if self._loop is not None:
            self._timer = self._loop.call_later(delay, self._probe)
