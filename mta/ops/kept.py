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

import logging
import math
import os

import orjson

from mta.cluster.store import PREFIX, Store, StoreDown

log = logging.getLogger("mta.control")

PAUSES = PREFIX + "pauses"
SYNC_EVERY = 10.0  # seconds between comparisons with the store's pauses


def pause_file(config_path: str | None) -> str | None:
    return None if config_path is None else config_path + ".pauses"


def _valid(doc) -> dict[str, float | None]:
    if not isinstance(doc, dict):
        return {}
    return {str(k): (None if v is None else float(v)) for k, v in doc.items()
            if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))}


class KeptPauses:
    def __init__(self, path: str | None, store: Store | None = None) -> None:
        self.path = path
        self.store = store

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
        return _valid({k.decode(): (orjson.loads(v) if v else None) for k, v in raw.items()})

    async def load(self) -> dict[str, float | None]:
        kept = await self.read_store()
        return self.read_file() if kept is None else kept

    async def changed(self, target: str, until: float | None, paused: bool) -> bool:
        """One pause (paused) or resume obeyed: into the store (the file is written by the
        caller with every pause in force); False when the store did not take it."""
        if self.store is None:
            return True
        try:
            if paused:
                await self.store.call(self.store.client.hset, PAUSES, target,
                                      b"" if until is None else orjson.dumps(until))
            else:
                await self.store.call(self.store.client.hdel, PAUSES, target)
        except StoreDown:
            return False
        return True
