"""The shell's one source of time.

Two times, for two purposes:

- `wall()`: seconds since the epoch, for what people and other machines read: results'
  timestamps, a pause's end, a signed command's age.
- `now()`: monotonic seconds (the event loop's time), for everything measured against
  itself: deadlines, timers, idle timeouts, confirm latencies. It never jumps when the
  system clock is set.

Timers and sleeps go through the clock too (`call_at`, `sleep`, `sleep_until`), so that a
test can run the shell on a `FakeClock` (tests/fakes.py) and move time forward instead of
waiting for it; a reader of the time on every message binds `now_reader()` once, on its
loop. Nothing else in mta/ reads `time.*` or `loop.time()`: a test says so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Clock", "SYSTEM"]

_running_loop = asyncio._get_running_loop  # None outside a loop (get_running_loop raises)


class Clock:
    """Wall and monotonic time, timers and sleeps, from the system and the running loop.

    `wall`: the function that gives the wall time (a test may fix it); code that needs only
    the wall time takes that function, not the clock."""

    __slots__ = ("wall",)

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall

    def now(self) -> float:
        """Monotonic seconds, on the running event loop's scale (its timers')."""
        loop = _running_loop()
        return loop.time() if loop is not None else time.monotonic()

    def now_reader(self) -> Callable[[], float]:
        """`now` as a function of the running loop, looked up once: for code that reads the
        time on every message and always runs on that loop (`now()` finds the loop on each
        call). Call it on the loop, and not before."""
        return asyncio.get_running_loop().time

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> asyncio.TimerHandle:
        """`callback(*args)` at monotonic time `when`; the handle's cancel() stops it."""
        return asyncio.get_running_loop().call_at(when, callback, *args)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def sleep_until(self, when: float) -> None:
        await asyncio.sleep(max(0.0, when - self.now()))


SYSTEM = Clock()
