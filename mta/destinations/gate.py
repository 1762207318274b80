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

from typing import TYPE_CHECKING

from shaper.limiter import message_burst
from shaper.units import Rate

if TYPE_CHECKING:
    from mta.cluster.cluster import Cluster
    from mta.destinations.delivery import Destination

RETRY = 0.5  # seconds between tries for a lease the other nodes hold


class Gate:
    __slots__ = ("dest", "cluster", "refused_until", "_retry")

    def __init__(self, dest: Destination, cluster: Cluster) -> None:
        self.dest = dest
        self.cluster = cluster
        self.refused_until = 0.0  # monotonic: no new worker before this (the leases are taken)
        self._retry = None

    def _limits(self) -> list[tuple[str, int]]:
        dest = self.dest
        limits = [(dest.key, dest.core.policy.connection_limit)]
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
        at = await self.cluster.rates.slot("connect:" + dest.key, policy.max_connection_rate,
                                           policy.connection_limit)
        return at - dest._time.now()

    async def message_wait(self) -> float:
        """Seconds until the shared message rate (and the provider's) allows one more."""
        dest = self.dest
        rates = self.cluster.rates
        per_second = dest.core.per_second
        at = await rates.slot(dest.key, Rate(per_second, 1.0), message_burst(per_second))
        share = dest.share
        if share is not None:
            at = max(at, await rates.slot(share.key, Rate(share.per_second, 1.0), message_burst(share.per_second)))
        return at - dest._time.now()

    def message_now(self) -> bool:
        """A shared slot due now, for a message pipelined behind another (it cannot wait)."""
        dest = self.dest
        if not self.cluster.rates.due(dest.key):
            return False
        return dest.share is None or self.cluster.rates.due(dest.share.key)

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
