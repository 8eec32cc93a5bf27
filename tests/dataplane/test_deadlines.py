"""The listener's deadline timer (dataplane.deadlines): checks never run early, owners that leave
are not checked, a check that watches again is served by the same timer, one failing check does
not stop the others, and many owners share one loop timer."""

from __future__ import annotations

import asyncio

import uvloop

from dataplane.deadlines import TICKS_PER_SECOND, Deadlines


class Owner:
    def __init__(self, loop: asyncio.AbstractEventLoop, name: str, log: list) -> None:
        self.loop = loop
        self.name = name
        self.log = log
        self.again: tuple[Deadlines, float] | None = None
        self.fail = False

    def _check_deadline(self) -> None:
        self.log.append((self.name, self.loop.time()))
        if self.fail:
            raise RuntimeError("a broken check")
        if self.again is not None:
            deadlines, when = self.again
            self.again = None
            deadlines.watch(self, when)


def run(body) -> None:
    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(body(loop))
    finally:
        loop.close()


def test_checks_run_in_order_and_never_before_their_deadline():
    async def body(loop):
        deadlines = Deadlines(loop)
        log: list = []
        now = loop.time()
        wanted = {"c": now + 0.15, "a": now + 0.03, "b": now + 0.07, "a2": now + 0.03}
        for name, when in wanted.items():
            deadlines.watch(Owner(loop, name, log), when)
        await asyncio.sleep(0.3)
        assert sorted(name for name, _ in log) == ["a", "a2", "b", "c"]
        assert [name for name, _ in log][-2:] == ["b", "c"]
        for name, at in log:
            assert at >= wanted[name], (name, at, wanted[name])
        # Every tick passed: nothing is left waiting, and no timer is set.
        assert deadlines.slots == {} and deadlines.ticks == [] and deadlines.timer is None

    run(body)


def test_a_forgotten_owner_is_not_checked():
    async def body(loop):
        deadlines = Deadlines(loop)
        log: list = []
        gone, kept = Owner(loop, "gone", log), Owner(loop, "kept", log)
        tick = deadlines.watch(gone, loop.time() + 0.02)
        deadlines.watch(kept, loop.time() + 0.02)
        deadlines.forget(gone, tick)
        await asyncio.sleep(0.1)
        assert [name for name, _ in log] == ["kept"]

    run(body)


def test_a_check_that_watches_again_does_not_hide_an_earlier_tick():
    """During a check, the timer must end up set for the earliest tick waiting, not for the
    one the check just asked for."""

    async def body(loop):
        deadlines = Deadlines(loop)
        log: list = []
        now = loop.time()
        first, middle = Owner(loop, "first", log), Owner(loop, "middle", log)
        first.again = (deadlines, now + 0.3)
        deadlines.watch(first, now + 0.02)
        deadlines.watch(middle, now + 0.1)
        await asyncio.sleep(0.2)
        # The middle owner was checked at its own time, before the re-watched first one.
        assert [name for name, _ in log] == ["first", "middle"]
        assert log[1][1] >= now + 0.1
        await asyncio.sleep(0.2)
        assert [name for name, _ in log] == ["first", "middle", "first"]
        assert log[2][1] >= now + 0.3

    run(body)


def test_one_failing_check_leaves_the_others_of_its_tick_checked(caplog):
    async def body(loop):
        deadlines = Deadlines(loop)
        log: list = []
        when = loop.time() + 0.02
        owners = [Owner(loop, f"o{n}", log) for n in range(5)]
        owners[2].fail = True
        for owner in owners:
            deadlines.watch(owner, when)
        await asyncio.sleep(0.1)
        assert sorted(name for name, _ in log) == [f"o{n}" for n in range(5)]

    run(body)
    assert "deadline check" in caplog.text


def test_many_owners_share_one_loop_timer():
    async def body(loop):
        deadlines = Deadlines(loop)
        log: list = []
        now = loop.time()
        # 10,000 owners over one second: one timer, one entry per tick of 1/64 s.
        for n in range(10_000):
            deadlines.watch(Owner(loop, n, log), now + 1 + n / 10_000)
        assert len(deadlines.ticks) <= TICKS_PER_SECOND + 2
        assert deadlines.timer is not None
        await asyncio.sleep(2.2)
        assert len(log) == 10_000

    run(body)
