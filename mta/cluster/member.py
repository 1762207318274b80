"""The engine as a node of a cluster: what it does with the store besides its limits.

It keeps the shared record of outcomes in front of the local journal, restores and shares
the operator's pauses (mta.ops.kept), runs the heartbeat and the pause sync beside the
broker sessions, asks the store about a redelivered copy the node has no outcome for, and
says in its heartbeat what it runs (for `mta status` on any node).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable

from mta.broker.topology import LANES
from mta.cluster.cluster import Cluster
from mta.settle.results import recent_key
from mta.supervision import TaskCrashed, endless, leaves


log = logging.getLogger("mta.cluster")

MAX_FACTS = 10_000
ROUTE_FAULT_FOR = 3600.0  # seconds a route's refused credentials are told to nodes that start meanwhile  # destinations with facts of other nodes kept for when they are made here


class Member:
    def __init__(self, engine, cluster: Cluster) -> None:
        self.engine = engine
        self.cluster = cluster
        self._recalls: set[asyncio.Task] = set()
        cluster.shared.on_wanted = self.wanted
        cluster.shared.apply = self.apply
        engine.routes.on_fault = self._route_fault
        self.facts: dict[str, dict[str, dict]] = {}  # destination key -> kind -> fact, for ones not here yet

    def _route_fault(self, key: str, why: str) -> None:
        self.cluster.shared.tell(key, "route", {"until": self.engine.clock() + ROUTE_FAULT_FOR, "reason": why})

    def apply(self, key: str, kind: str, fact: dict | None) -> None:
        """A fact another node learned: for the destination here, and for one made later."""
        if fact is None:
            return  # it ends by itself (an operator's resume is shared through mta.ops.kept)
        if kind == "route":  # a route's credentials refused: paused here until they change
            self.engine.routes.adopt_fault(key, str(fact.get("reason", "credentials refused")), float(fact["until"]))
            return
        if len(self.facts) > MAX_FACTS:  # destinations never made here: keep what is in force
            now = self.engine.clock()
            self.facts = {k: f for k, f in self.facts.items() if any(x["until"] > now for x in f.values())}
        destination = self.engine.destinations.get(key)
        if destination is not None and destination.gate is not None:
            destination.gate.apply(kind, fact)  # ValueError, TypeError, KeyError: never kept
        self.facts.setdefault(key, {})[kind] = fact

    def created(self, destination) -> None:
        """A destination made here: what the others learned of it applies from the start."""
        facts = self.facts.get(destination.key)
        if facts:
            now = self.engine.clock()
            for kind, fact in list(facts.items()):
                try:
                    if fact["until"] > now:
                        destination.gate.apply(kind, fact)
                        continue
                except (ValueError, TypeError, KeyError) as exc:  # written by none of ours
                    log.warning("a shared %s of %s was ignored: %s", kind, destination.key, exc)
                del facts[kind]

    def wanted(self, key: str) -> None:
        """Another node waits for a lease of `key`: an idle session of it here goes."""
        destination = self.engine.destinations.get(key)
        if destination is not None:
            destination.close_one_idle()

    async def run(self, sessions: Callable[[], Awaitable[None]]) -> None:
        """The broker `sessions` as a node: the store's parts up first, closed after."""
        engine, cluster = self.engine, self.cluster
        engine.journal = cluster.keep_record(engine.journal)
        await cluster.start()
        await engine.kept.restore()
        loops = asyncio.create_task(self._supervised(), name="cluster")
        try:
            await sessions()
        finally:
            loops.cancel()
            await cluster.close()

    async def _supervised(self) -> None:
        """The heartbeat (which renews the leases), the shared state and the pause sync; a
        bug in them is logged and counted like a session's (`mta_task_crashes_total`), and
        they start again a second later: without the heartbeat this node's leases would
        lapse and the others would open its connections too."""
        while True:
            try:
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(endless("cluster", self.cluster.run()))
                    tasks.create_task(endless("cluster", self.engine.kept.sync()))
            except* TaskCrashed as group:
                for crash in leaves(group):
                    self.engine._crashed(crash)
            await self.engine.time.sleep(1.0)

    def recall(self, job, book, tag: int) -> None:
        """A redelivered copy this node has no outcome for: ask the store whether another
        node finished it (then its result, never a second delivery), else deliver it."""
        task = asyncio.get_running_loop().create_task(self._recalled(job, book, tag))
        self._recalls.add(task)
        task.add_done_callback(self._recalls.discard)

    async def _recalled(self, job, book, tag: int) -> None:
        engine = self.engine
        known = await self.cluster.record.recall(recent_key(job))
        if known is not None:
            engine.settler.recent[recent_key(job)] = known
            if engine.settler.replay_final(job, book, tag):
                return
        if not book.closed:
            engine.intake.admitted(job)

    def describe(self) -> dict:
        """What this node says about itself in its heartbeat."""
        engine = self.engine
        return {"pid": os.getpid(), "lanes": list(LANES) if engine.ready.is_set() else [],
                "connections": sum(d.connected for d in engine.destinations.values())}
