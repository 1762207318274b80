"""A destination's limits across nodes (mta.cluster), as its workers meet them.

Without a store nothing here exists: the destination's own limits are the whole story.
With one, a worker needs, besides what the destination allows it, a lease for its
connection (counted against the destination's `connection_limit` and its provider's over
every node), a shared slot of `max_connection_rate` to open it, and a shared slot of the
message rate for every message. A lease refused means the other nodes have the
connections: the destination starts no worker for `RETRY` seconds (then tries again), so a
busy destination costs the store a call per retry, not one per message; a message whose
shared slot is more than `MAX_WAIT` away is held, never kept waiting unacknowledged.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import msgspec

from mta.cluster.leases import counts as open_leases
from mta.cluster.store import StoreDown
from mta.config import Policy
from shaper.adaptive import FLOOR
from shaper.limiter import message_burst
from shaper.pauses import MAX_PAUSE
from shaper.replies import slow_down
from shaper.state import Mode, Transition
from shaper.window import RELEARN_AFTER

if TYPE_CHECKING:
    from mta.cluster.cluster import Cluster
    from mta.destinations.delivery import Destination

RETRY = 0.5  # seconds between tries for a lease the other nodes hold
RATE_FOR = 60.0  # seconds a rate learned from "too fast" is offered to nodes that start meanwhile


class Gate:
    __slots__ = ("dest", "cluster", "refused_until", "_retry", "learned", "_applying", "_tasks")

    def __init__(self, dest: Destination, cluster: Cluster) -> None:
        self.dest = dest
        self.cluster = cluster
        self.refused_until = 0.0  # monotonic: no new worker before this (the leases are taken)
        self._retry = None
        self.learned: tuple[int, float] | None = None  # (connections, until, monotonic): a receiver's "too many"
        self._applying = False  # a fact of another node is being applied: not told back
        self._tasks: set[asyncio.Task] = set()

    def _limits(self) -> list[tuple[str, int]]:
        dest = self.dest
        limit = dest.core.policy.connection_limit
        if self.learned is not None:
            if self.learned[1] > dest._time.now():
                limit = min(limit, self.learned[0])
            else:
                self.learned = None
        limits = [(dest.key, limit)]
        if dest.share is not None:
            limits.append((dest.share.key, dest.share.limit))
        return limits

    def refused(self) -> bool:
        """The other nodes held every lease a moment ago: start no worker yet."""
        return self.refused_until > self.dest._time.now()

    async def lease(self) -> str | None:
        lease = await self.cluster.leases.acquire(self._limits())
        if lease is None:
            self.cluster.shared.want(self.dest.key)
            clock = self.dest._time
            self.refused_until = clock.now() + RETRY
            if self._retry is None:
                self._retry = clock.call_at(self.refused_until, self._again)
        return lease

    def _again(self) -> None:
        self._retry = None
        self.refused_until = 0.0  # a timer may fire a hair before its time
        self.dest.share_granted()  # start a worker if one is still wanted

    def release(self, lease: str) -> None:
        self.cluster.leases.release(lease)

    async def connection_wait(self) -> float:
        """Seconds until the shared `max_connection_rate` allows this connection (booked)."""
        dest = self.dest
        policy = dest.core.policy
        at = await self.cluster.rates.slot("connect:" + dest.key, policy.max_connection_rate.per_second,
                                           policy.connection_limit)
        return at - dest._time.now()

    async def message_wait(self) -> float:
        """Seconds until the shared message rate (and the provider's) allows one more."""
        dest = self.dest
        rates = self.cluster.rates
        per_second = dest.core.per_second
        at = await rates.slot(dest.key, per_second, message_burst(per_second))
        share = dest.share
        if share is not None:
            at = max(at, await rates.slot(share.key, share.per_second, message_burst(share.per_second)))
        return at - dest._time.now()

    def message_now(self) -> bool:
        """A shared slot due now, for a message pipelined behind another (it cannot wait)."""
        dest = self.dest
        if not self.cluster.rates.due(dest.key):
            return False
        return dest.share is None or self.cluster.rates.due(dest.share.key)

    # ---- what this node learns, every node knows (mta.cluster.shared)

    def moved(self, transition: Transition) -> None:
        """A pause (a pattern, a dead destination) or a throttle here: told to the others.
        An operator's pause is shared as such (mta.ops.kept), not from here."""
        if self._applying or transition.source is transition.target and transition.target is not Mode.BACKOFF:
            return
        core, dest = self.dest.core, self.dest
        until = core.state.until
        if until is None or transition.reason.startswith("operator"):
            return
        wall = dest._wall() + (until - dest._time.now())
        if transition.target is Mode.PAUSED:
            self.cluster.shared.tell(dest.key, "pause", {"until": wall, "reason": transition.reason})
        elif transition.target is Mode.BACKOFF and core.throttle is not None:
            self.cluster.shared.tell(dest.key, "throttle", {"until": wall, "reason": transition.reason,
                                                             "limits": msgspec.to_builtins(core.throttle)})

    def pushed_back(self, reply, slower: bool) -> None:
        """A receiver's "too many connections": the connections open across all nodes, less
        one, are the limit for all of them for a while (Postfix's feedback, cluster-wide).
        Its "too fast" (`slower`: this node lowered its rate): the others take that rate."""
        dest = self.dest
        if slower:
            self.cluster.shared.tell(dest.key, "rate", {"until": dest._wall() + RATE_FOR,
                                                        "per_second": dest.core.adaptive.current})
        elif slow_down(reply.code, reply.text) == "connections":
            task = asyncio.get_running_loop().create_task(self._too_many())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _too_many(self) -> None:
        dest = self.dest
        try:
            counts = (await open_leases(self.cluster.store, [dest.key]))[dest.key]
        except StoreDown:
            return
        connections = max(1, counts - 1)
        self.learned = (connections, dest._time.now() + RELEARN_AFTER)
        self.cluster.shared.tell(dest.key, "window", {"until": dest._wall() + RELEARN_AFTER,
                                                      "connections": connections})

    def apply(self, kind: str, fact: dict) -> None:
        """A fact another node learned of this destination (raises ValueError, TypeError or
        KeyError for one no node of ours wrote: its end is bounded as ours are)."""
        dest = self.dest
        left = min(float(fact["until"]) - dest._wall(), RELEARN_AFTER if kind == "window" else MAX_PAUSE)
        if left <= 0:
            return
        self._applying = True
        try:
            reason = f"{fact.get('reason', '')} (seen by another node)"
            if kind == "pause":
                dest.suspend(dest._wall() + left, reason)
            elif kind == "throttle":
                now = dest._time.now()
                dest.core.back_off(now, now + left, msgspec.convert(fact["limits"], Policy), reason)
            elif kind == "rate":
                dest.core.adopt_rate(max(FLOOR, float(fact["per_second"])), dest._time.now())
            elif kind == "window":
                self.learned = (max(1, int(fact["connections"])), dest._time.now() + left)
        finally:
            self._applying = False
