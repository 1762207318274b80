"""Operator pauses that outlive the process (SPEC §6): a pause made while a node was down,
or before it restarted, holds on that node when it starts.

Theory of operation: every pause or resume an MTA obeys is written to a small JSON file
beside the rules file (`RULES.pauses`: target -> until, null for open-ended), replaced
atomically, and, with a shared store, to the hash `mta:pauses`. At start a node takes the
store's pauses when it answers (the store has what other nodes obeyed meanwhile, resumes
too), else its file's. With a store, every `SYNC_EVERY` a node compares its pauses with the
store's, for a command it missed while its broker connection was down.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os

import orjson

from mta.cluster.store import PREFIX, Store, StoreDown
from mta.ops import commands

log = logging.getLogger("mta.control")

PAUSES = PREFIX + "pauses"
WRITTEN = b"\0written"  # a field written with every change: without it the store lost the hash
SYNC_EVERY = 10.0  # seconds between comparisons with the store's pauses


def pause_file(config_path: str | None) -> str | None:
    return None if config_path is None else config_path + ".pauses"


def _valid(doc) -> dict[str, float | None]:
    if not isinstance(doc, dict):
        return {}
    return {str(k): (None if v is None else float(v)) for k, v in doc.items()
            if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))}


class KeptPauses:
    """The engine's operator pauses (`engine.pauses`), kept in the file and the store."""

    def __init__(self, engine, path: str | None, store: Store | None = None) -> None:
        self.engine = engine
        self.path = path
        self.store = store
        self._unsaved: dict[str, tuple[float | None, bool]] = {}  # what the store has not taken yet
        self._saving: set[asyncio.Task] = set()

    async def restore(self) -> None:
        """At start: the pauses in force from before become the engine's."""
        pauses, now = self.engine.pauses, self.engine.clock()
        for target, until in (await self.load()).items():
            pauses.apply({"command": "pause", "target": target, "until": until}, now)
        if pauses:
            log.info("%d operator pause(s) in force from before: %s", len(pauses),
                     ", ".join(sorted(pauses.active(now))[:10]))

    def keep(self, target: str, until: float | None, paused: bool) -> None:
        """A pause or resume obeyed: on disk at once, and into the store."""
        self.write_file(self._operators())
        if self.store is not None:
            self._unsaved[target] = (until, paused)
            task = asyncio.get_running_loop().create_task(self._save())
            self._saving.add(task)
            task.add_done_callback(self._saving.discard)

    def _operators(self) -> dict[str, float | None]:
        """The pauses in force that an operator made: a route paused for refused credentials
        is not one (it is lifted when its password changes, and tried again after a restart)."""
        faults = self.engine.routes.faults
        return {k: v for k, v in self.engine.pauses.active(self.engine.clock()).items() if k not in faults}

    async def _save(self) -> None:
        for target, (until, paused) in list(self._unsaved.items()):
            if await self.changed(target, until, paused) and self._unsaved.get(target) == (until, paused):
                del self._unsaved[target]

    async def sync(self) -> None:
        """Every SYNC_EVERY: what this node failed to write goes to the store, then the
        store's pauses become this node's (a command missed while the broker was away)."""
        engine = self.engine
        while True:
            await engine.time.sleep(SYNC_EVERY)
            await self._save()
            shared = await self.read_store()
            if shared is None and self.store is not None and self.store.up:
                await self._push(self._operators())  # the store lost them: ours are the record
                continue
            if shared is None or self._unsaved:
                continue
            now = engine.clock()
            active = self._operators()
            for target, until in shared.items():
                if target not in active or active[target] != until:
                    commands.pause_or_resume(engine, {"command": "pause", "target": target, "until": until}, now)
            for target in active.keys() - shared.keys():
                commands.pause_or_resume(engine, {"command": "resume", "target": target}, now)

    def read_file(self) -> dict[str, float | None]:
        if self.path is None:
            return {}
        try:
            with open(self.path, "rb") as f:
                return _valid(orjson.loads(f.read()))
        except FileNotFoundError:
            return {}
        except (OSError, orjson.JSONDecodeError) as exc:
            log.warning("operator pauses in %s could not be read (%s); starting without them", self.path, exc)
            return {}

    def write_file(self, active: dict[str, float | None]) -> None:
        if self.path is None:
            return
        temporary = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(temporary, "wb") as f:
                f.write(orjson.dumps(active))
            os.replace(temporary, self.path)
        except OSError as exc:
            log.warning("operator pauses could not be kept in %s (%s): a restart forgets them", self.path, exc)

    async def read_store(self) -> dict[str, float | None] | None:
        """The store's pauses, or None when there is no store or it does not answer."""
        if self.store is None:
            return None
        try:
            raw = await self.store.call(self.store.client.hgetall, PAUSES)
        except StoreDown:
            return None
        if WRITTEN not in raw:  # never written, or the store lost it (a restart without persistence)
            return None
        pauses = {}
        for k, v in raw.items():
            if k != WRITTEN:
                try:
                    pauses[k.decode()] = orjson.loads(v) if v else None
                except (orjson.JSONDecodeError, UnicodeDecodeError):
                    log.warning("an operator pause in the store could not be read: %r", k[:100])
        return _valid(pauses)

    async def load(self) -> dict[str, float | None]:
        """The store's pauses; this node's file's when the store has none on record (they go
        to the store then: it lost them, or never had any)."""
        kept = await self.read_store()
        if kept is not None:
            return kept
        kept = self.read_file()
        if self.store is not None and self.store.up:
            await self._push(kept)
        return kept

    async def _push(self, pauses: dict[str, float | None]) -> None:
        mapping = {WRITTEN: b"1", **{k: b"" if v is None else orjson.dumps(v) for k, v in pauses.items()}}
        try:
            await self.store.call(self.store.client.hset, PAUSES, mapping=mapping)
        except StoreDown:
            pass

    async def changed(self, target: str, until: float | None, paused: bool) -> bool:
        """One pause (paused) or resume obeyed: into the store (the file is written by the
        caller with every pause in force); False when the store did not take it."""
        if self.store is None:
            return True
        try:
            if paused:
                await self.store.call(self.store.client.hset, PAUSES,
                                      mapping={target: b"" if until is None else orjson.dumps(until), WRITTEN: b"1"})
            else:
                pipe = self.store.client.pipeline(transaction=False)
                pipe.hdel(PAUSES, target)
                pipe.hset(PAUSES, WRITTEN, b"1")
                await self.store.call(pipe.execute)
        except StoreDown:
            return False
        return True
