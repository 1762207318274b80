"""Fakes shared by the shell's unit tests, each standing in for one real interface.

`FakeClock` is mta.clock.Clock on virtual time: the wall and the monotonic time are one
number that moves only when a test says so (`advance`), or, with `run`, whenever every task
is waiting for it (trio's autojump clock). Timers and sleeps fire in time order as it moves:
minutes of pacing, idle timeouts and probing run in milliseconds, and each sleep asked for
is recorded in `sleeps`. tests/mta/test_fakes.py holds it to the real clock's interface.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any


class FakeTimer:
    """What `call_at` returns: cancel() stops it, as asyncio.TimerHandle's does."""

    __slots__ = ("when", "callback", "args", "cancelled")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.t = start
        self.sleeps: list[float] = []
        self._timers: list[tuple[float, int, FakeTimer]] = []
        self._order = itertools.count()

    # ---- mta.clock.Clock

    def wall(self) -> float:
        return self.t

    def now(self) -> float:
        return self.t

    def now_reader(self) -> Callable[[], float]:
        return self.now

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> FakeTimer:
        timer = FakeTimer(when, callback, args)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await self.sleep_until(self.t + seconds)

    async def sleep_until(self, when: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self.call_at(when, _wake, future)
        await future

    # ---- moving time

    def advance(self, seconds: float) -> None:
        """Move `seconds` on, running each timer due on the way at its own time."""
        end = self.t + seconds
        while self._timers and self._timers[0][0] <= end:
            when, _, timer = heapq.heappop(self._timers)
            self.t = max(self.t, when)
            if not timer.cancelled:
                timer.callback(*timer.args)
        self.t = end

    def next_timer(self) -> float | None:
        """When the next live timer is due (None: none is)."""
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    async def run(self, done: Callable[[], bool], settle: int = 20) -> None:
        """Until `done()`: let every task run until all wait (`settle` turns of the loop),
        then jump to the next timer and fire it."""
        while not done():
            for _ in range(settle):
                await asyncio.sleep(0)
            if done():
                return
            due = self.next_timer()
            if due is None:
                raise AssertionError("nothing left to wait for, and not done")
            self.advance(max(0.0, due - self.t))


def _wake(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
