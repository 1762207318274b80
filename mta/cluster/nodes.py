"""The nodes of the cluster: who is there, and how many share the limits.

Every node writes a heartbeat into `mta:nodes` once a second (its name, the store's time,
and a short JSON of what it runs: lanes, connections, pid), which also reads every other
node's. `live()` is the number of nodes seen within `LIVE_FOR`: what a node divides the
limits by while the store is down (the last count it saw, at least 1). The heartbeat is
also how a node notices that the store answers again, and when it renews its leases.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson

from mta.cluster import scripts
from mta.cluster.store import PREFIX, Store, StoreDown

log = logging.getLogger("mta.cluster")

LIVE_FOR = 60  # seconds: a node seen within this counts for the shares
NODES = PREFIX + "nodes"


class Nodes:
    def __init__(self, store: Store, name: str, describe: Callable[[], dict] = dict) -> None:
        self._store = store
        self.name = name
        self.describe = describe  # what this node says about itself (JSON-able)
        self._live = 1
        self.seen: dict[str, dict] = {}  # node -> its last heartbeat (with "ago": seconds)
        store.script("HEARTBEAT", scripts.HEARTBEAT)

    def live(self) -> int:
        return self._live

    async def beat(self) -> None:
        """One heartbeat (raises StoreDown); updates `seen` and `live()`."""
        doc = orjson.dumps(self.describe()).decode()
        reply = await self._store.run("HEARTBEAT", [NODES], [self.name, doc, LIVE_FOR])
        now = int(reply[0])
        seen: dict[str, dict] = {}
        for i in range(1, len(reply) - 1, 2):
            name = reply[i].decode()
            stamp, _, body = reply[i + 1].decode().partition(" ")
            try:
                info = orjson.loads(body)
            except orjson.JSONDecodeError:
                info = {}
            info = info if isinstance(info, dict) else {}
            info["ago"] = max(0, now - int(stamp))
            seen[name] = info
        self.seen = seen
        self._live = max(1, sum(1 for info in seen.values() if info["ago"] <= LIVE_FOR))


async def forget(store: Store, name: str) -> None:
    """A node that stops says so: the others stop counting it at once."""
    try:
        await store.call(store.client.hdel, NODES, name)
    except StoreDown:
        pass
