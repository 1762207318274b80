"""Message and connection rates across nodes: GCRA in the store, taken in small batches.

Theory of operation: the store keeps each rate's theoretical arrival time (one GCRA, as
`shaper.limiter.Gcra` does in one process) and hands out a batch of consecutive slots per
round trip: the script moves the arrival time by `n` intervals and says when the first of
them conforms. The node spends the batch's slots in order, each at its own time (slot i at
first + i * interval), so several nodes taking batches in turn send at the shared rate, as
one process would. A batch is about `BATCH_SECONDS` of the rate, and never more than its
burst (nor `MAX_BATCH`), so the store sees a few calls per second per busy destination, not
one per message. A slot is kept until used, however late: a trickle of mail under a rate it
never reaches (the common case) then pays one round trip per batch, not per message. Used
late, a node's batch can bunch up with the slots after it by no more than the burst, so with
M nodes a window of the rate's period holds at most its count plus (M + 1) bursts.

With the store down, a node keeps to a local GCRA at rate / nodes (its share).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from mta.clock import SYSTEM, Clock
from mta.cluster import scripts
from mta.cluster.store import PREFIX, Store, StoreDown
from shaper.limiter import Gcra
from shaper.units import Rate

BATCH_SECONDS = 0.1
MAX_BATCH = 20
MAX_KEYS = 10_000  # rates kept in hand; past it, the spent and idle ones are dropped


class _Batch:
    __slots__ = ("first", "interval", "left")

    def __init__(self, first: float, interval: float, n: int) -> None:
        self.first = first  # monotonic time of the next slot
        self.interval = interval
        self.left = n

    def take(self) -> float | None:
        """The next slot's time (booked), or None when none is left."""
        if not self.left:
            return None
        at = self.first
        self.first += self.interval
        self.left -= 1
        return at


class Rates:
    """Shared rates of this node: `slot(key, rate, burst)` is when the next event may go."""

    def __init__(self, store: Store | None, nodes: Callable[[], int], clock: Clock = SYSTEM) -> None:
        self._store = store
        self._nodes = nodes
        self._clock = clock
        self._batches: dict[str, _Batch] = {}
        self._asking: dict[str, asyncio.Future] = {}
        self._local: dict[str, tuple[Gcra, int]] = {}  # the fallback: (limiter, nodes it was made for)
        if store is not None:
            store.script("GCRA", scripts.GCRA)

    def due(self, key: str) -> bool:
        """Take a slot of the batch in hand if it is due now (for a message pipelined
        behind another, which cannot wait); False: none, nothing taken."""
        batch = self._batches.get(key)
        if batch is None:
            return False
        if batch.left and batch.first <= self._clock.now():
            batch.take()
            return True
        return False

    async def slot(self, key: str, per_second: float, burst: int = 1) -> float:
        """The monotonic time at which one more event at `per_second` may go (booked)."""
        while True:
            now = self._clock.now()
            batch = self._batches.get(key)
            if batch is not None:
                at = batch.take()
                if at is not None:
                    return at
            if self._store is None or not self._store.up:
                return self._fallback(key, per_second, burst, now)
            asking = self._asking.get(key)
            if asking is not None:
                await asyncio.shield(asking)
                continue
            if not await self._ask(key, per_second, burst):
                return self._fallback(key, per_second, burst, self._clock.now())

    async def _ask(self, key: str, per_second: float, burst: int) -> bool:
        """One round trip for a batch of slots; False when the store did not answer."""
        future = asyncio.get_running_loop().create_future()
        self._asking[key] = future
        n = max(1, min(MAX_BATCH, int(per_second * BATCH_SECONDS), burst))
        interval_us = math.ceil(1_000_000 / per_second)
        try:
            first_us = await self._store.run("GCRA", [PREFIX + "rate:" + key],
                                             [interval_us, (burst - 1) * interval_us, n])
            # Slots count from when the answer arrived: later than the store's now, never earlier.
            now = self._clock.now()
            batches = self._batches
            if len(batches) >= MAX_KEYS and key not in batches:  # destinations come and go: keep the live ones
                self._batches = batches = {k: b for k, b in batches.items() if b.left and b.first > now - 60}
            batches[key] = _Batch(now + first_us / 1e6, interval_us / 1e6, n)
            return True
        except StoreDown:
            return False
        finally:
            del self._asking[key]
            future.set_result(None)

    def _fallback(self, key: str, per_second: float, burst: int, now: float) -> float:
        nodes = max(1, self._nodes())
        limiter, made_for = self._local.get(key, (None, 0))
        share = Rate(per_second, float(nodes))
        if limiter is None:
            limiter = Gcra(share, max(1, burst // nodes))
        elif made_for != nodes or limiter.rate != share:
            limiter.set_rate(share, now, burst=max(1, burst // nodes))
        if len(self._local) >= MAX_KEYS and key not in self._local:
            self._local = {k: v for k, v in self._local.items() if not v[0].is_idle(now)}
        self._local[key] = (limiter, nodes)
        return now + limiter.reserve(now)

