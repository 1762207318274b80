"""Connection leases: a destination's `connection_limit` across every node.

Theory of operation (KumoMTA's design): each destination (and each provider ceiling above
it) has a sorted set in the store; an open connection is one member, scored by the time it
expires unless renewed. A node opens a connection only after `acquire` put a member in
every set the connection counts against, all or none, in one script. The node renews all
its leases in one call every `RENEW_EVERY` (the heartbeat), not per message, and removes
a lease when its connection closes; a node that dies stops renewing, and its leases are
gone after `LIFETIME`.

With the store down a node counts for itself: a connection is allowed while this node's
own connections for that key stay under its share, `limit // nodes` (at least 1), with
`nodes` the count seen in the last minute. The leases it holds are written again when the
store answers, so the count there is right after a restart of the store too.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import logging
from collections import Counter
from collections.abc import Callable, Sequence

from mta.cluster import scripts
from mta.cluster.store import PREFIX, Store, StoreDown

log = logging.getLogger("mta.cluster")

LIFETIME = 30.0  # seconds a lease lives unless renewed
RENEW_EVERY = 10.0


def share(limit: int, nodes: int) -> int:
    """A node's part of `limit` while the store is down: never the whole unless alone."""
    return max(1, limit // max(1, nodes))


class Leases:
    """This node's connection leases."""

    def __init__(self, store: Store | None, node: str, nodes: Callable[[], int]) -> None:
        self._store = store
        self._nodes = nodes
        # a token of this process: two processes under one name must never share a member
        self._members = (f"{node}:{secrets.token_hex(4)}#{n}" for n in itertools.count(1))
        self._held: dict[str, tuple[str, ...]] = {}  # member -> the keys it holds
        self.open: Counter[str] = Counter()  # connections of this node per key
        self._removing: set[asyncio.Task] = set()
        if store is not None:
            for name in ("ACQUIRE", "RENEW", "RELEASE"):
                store.script(name, getattr(scripts, name))

    async def acquire(self, limits: Sequence[tuple[str, int]]) -> str | None:
        """A lease for one connection counted against every (key, limit), or None when one
        of them is full. The returned member is given back to `release`."""
        member = next(self._members)
        store = self._store
        granted = None
        if store is not None and store.up:
            try:
                full = await store.run("ACQUIRE", [PREFIX + "lease:" + k for k, _ in limits],
                                       [member, int(LIFETIME * 1000), *(limit for _, limit in limits)])
                granted = full == 0
            except StoreDown:
                pass
        if granted is None:  # no store, or it did not answer: this node's share
            nodes = self._nodes()
            granted = all(self.open[k] < share(limit, nodes) for k, limit in limits)
        if not granted:
            return None
        keys = tuple(k for k, _ in limits)
        self._held[member] = keys
        for k in keys:
            self.open[k] += 1
        return member

    def release(self, member: str) -> None:
        """The connection closed: its lease goes at once here, and from the store in the
        background (a cancelled worker releases too; one the store never heard of expires)."""
        keys = self._held.pop(member, None)
        if keys is None:
            return
        for k in keys:
            self.open[k] -= 1
            if not self.open[k]:
                del self.open[k]
        store = self._store
        if store is not None and store.up:
            task = asyncio.get_running_loop().create_task(self._remove(keys, member))
            self._removing.add(task)
            task.add_done_callback(self._removing.discard)

    async def _remove(self, keys: tuple[str, ...], member: str) -> None:
        try:
            await self._store.run("RELEASE", [PREFIX + "lease:" + k for k in keys], [member])
        except StoreDown:
            pass  # it expires by itself

    async def released(self) -> None:
        """Wait until the store heard of every release so far."""
        if self._removing:
            await asyncio.gather(*self._removing)

    async def renew(self) -> None:
        """Write every lease again (raises StoreDown)."""
        if self._store is None or not self._held:
            return
        keys, members = [], []
        for member, held in self._held.items():
            for k in held:
                keys.append(PREFIX + "lease:" + k)
                members.append(member)
        await self._store.run("RENEW", keys, [int(LIFETIME * 1000), *members])


async def counts(store: Store, keys: Sequence[str]) -> dict[str, int]:
    """Connections open across all nodes per key (for `mta status`); raises StoreDown."""
    pipe = store.client.pipeline(transaction=False)
    for k in keys:
        pipe.zcard(PREFIX + "lease:" + k)
    return dict(zip(keys, await store.call(pipe.execute)))
