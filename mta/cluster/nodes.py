"""The nodes of the cluster: who is there, and how many share the limits.

Every node writes a heartbeat into `mta:nodes` once a second (its name, the store's time,
and a short JSON of what it runs: lanes, connections, pid), which also reads every other
node's. `live()` is the number of nodes seen within `LIVE_FOR`: what a node divides the
limits by while the store is down (the last count it saw, at least 1). The heartbeat is
also how a node notices that the store answers again, and when it renews its leases.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import orjson

from mta.cluster import scripts
from mta.cluster.store import PREFIX, Store, StoreDown

log = logging.getLogger("mta.cluster")

LIVE_FOR = 60  # seconds: a node seen within this counts for the shares
NODES = PREFIX + "nodes"


class Nodes:
    def __init__(self, store: Store, name: str, describe: Callable[[], dict] = dict,
                 remember: str | None = None, at_least: int = 1) -> None:
        self._store = store
        self.name = name
        self.describe = describe  # what this node says about itself (JSON-able)
        # The count last seen, kept in a file: a node that starts while the store is away
        # divides by it, not by 1 (which would be every limit in full).
        self._remember = remember
        # (`at_least`: the processes started together by `mta run --processes`, before any beat)
        self._live = max(_recalled(remember), at_least)
        self.lost = False  # the last beat found this node missing from the store
        self.seen: dict[str, dict] = {}  # node -> its last heartbeat (with "ago": seconds)
        store.script("HEARTBEAT", scripts.HEARTBEAT)

    def live(self) -> int:
        return self._live

    async def beat(self) -> None:
        """One heartbeat (raises StoreDown); updates `seen` and `live()`."""
        doc = orjson.dumps(self.describe()).decode()
        reply = await self._store.run("HEARTBEAT", [NODES], [self.name, doc, LIVE_FOR])
        now = int(reply[0])
        self.lost = not reply[1]  # the store had no record of this node: it lost its data
        seen: dict[str, dict] = {}
        for i in range(2, len(reply) - 1, 2):
            try:  # entries of other versions, or written by hand, are skipped
                name = reply[i].decode()
                stamp, _, body = reply[i + 1].decode().partition(" ")
                info = orjson.loads(body)
                info = info if isinstance(info, dict) else {}
                info["ago"] = max(0, now - int(stamp))
            except (UnicodeDecodeError, ValueError):
                continue
            seen[name] = info
        self.seen = seen
        live = max(1, sum(1 for info in seen.values() if info["ago"] <= LIVE_FOR))
        if live != self._live and self._remember is not None:
            _keep(self._remember, live)
        self._live = live


def _recalled(path: str | None) -> int:
    try:
        with open(path or "", "rb") as f:
            return max(1, min(10_000, int(f.read(16))))
    except (OSError, ValueError):
        return 1


def _keep(path: str, live: int) -> None:
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "w") as f:
            f.write(str(live))
        os.replace(temporary, path)
    except OSError as exc:
        log.warning("the count of nodes could not be kept in %s (%s)", path, exc)


async def forget(store: Store, name: str) -> None:
    """A node that stops says so: the others stop counting it at once."""
    try:
        await store.call(store.client.hdel, NODES, name)
    except StoreDown:
        pass
