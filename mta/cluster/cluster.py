"""This node's part of the cluster: the store, the heartbeat, leases, rates and the shared
record of outcomes, and the one loop that keeps them up (`run`)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

from mta.clock import SYSTEM, Clock
from mta.cluster.leases import RENEW_EVERY, Leases
from mta.cluster.nodes import Nodes, forget
from mta.cluster.rates import Rates
from mta.cluster.record import SharedRecord
from mta.cluster.shared import SharedState
from mta.cluster.store import Store, StoreDown

log = logging.getLogger("mta.cluster")

BEAT_EVERY = 1.0  # seconds between heartbeats (and pings of a store that is down)


def default_node() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Cluster:
    def __init__(self, url: str, node: str | None = None, *, clock: Clock = SYSTEM,
                 on_change: Callable[[bool], None] | None = None, remember: str | None = None,
                 at_least: int = 1) -> None:
        self.name = node or default_node()
        self._clock = clock
        self.store = Store(url, on_change=on_change)
        self.nodes = Nodes(self.store, self.name, remember=remember, at_least=at_least)
        self.leases = Leases(self.store, self.name, self.nodes.live)
        self.rates = Rates(self.store, self.nodes.live, clock)
        self.record: SharedRecord | None = None
        # What one node learns of a destination, every node knows (set `shared.apply` and
        # `shared.on_wanted` before `run`).
        self.shared = SharedState(self.store, self.name, lambda key, kind, fact: None, clock.wall, clock.sleep)

    @property
    def up(self) -> bool:
        return self.store.up

    def keep_record(self, journal) -> SharedRecord:
        """The shared record of outcomes, standing in front of the local journal."""
        self.record = SharedRecord(self.store, journal, self._clock.wall)
        return self.record

    async def start(self) -> None:
        """The first heartbeat: how many nodes there are, before any limit is shared."""
        try:
            await self.nodes.beat()
        except StoreDown:
            pass

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._beat())
            tasks.create_task(self.shared.run())
            if self.record is not None:
                tasks.create_task(self.record.run(self._clock.sleep))

    async def _beat(self) -> None:
        renewed, generation = self._clock.now(), self.store.generation
        while True:
            await self._clock.sleep(BEAT_EVERY)
            try:
                await self.nodes.beat()
                # the store came back, or lost its data (this node was not on record): the
                # leases held here go back at once, not at the next renewal
                if (generation != self.store.generation or self.nodes.lost
                        or self._clock.now() - renewed >= RENEW_EVERY):
                    generation = self.store.generation
                    await self.leases.renew()
                    renewed = self._clock.now()
            except StoreDown:
                pass

    async def close(self) -> None:
        if self.record is not None and self.store.up:
            await self.record.flush()
        if self.store.up:
            await forget(self.store, self.name)
        await self.store.close()
