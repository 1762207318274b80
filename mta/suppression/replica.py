"""A node's copy of the shared list (mta.suppression.shared): its SQLite file holds every
entry and the last change of the shared feed it includes; this keeps it current.

At start the replica catches up: with the feed when it still holds the changes the
replica lacks, else by copying the whole list (a new node, or one that was away for more
than a day). Then, every second, what this node added goes to the database and the feed's
new changes come into the file and the index. While the database does not answer, the
node answers from the file as it is and keeps its additions; said once, and once when it
answers again.
"""

from __future__ import annotations

import asyncio
import logging

from mta.suppression.shared import SharedList
from mta.suppression.store import Store

log = logging.getLogger("mta.suppression")


class Replica:
    def __init__(self, shared: SharedList, local: Store, wall):
        self.shared = shared
        self.local = local
        self._wall = wall
        self.lock = asyncio.Lock()  # one statement at a time on the connection
        self.up = True

    async def start(self) -> None:
        """Catch up before the first message; from the file alone when the database is away."""
        try:
            async with self.lock:
                await self._catch_up()
            log.info("suppression list: shared at %s", self.shared.where)
        except Exception as exc:
            self._down(exc)

    async def _catch_up(self) -> None:
        first, last = await self.shared.feed()
        at = await asyncio.to_thread(self.local.replica_seq)
        if last and (at == 0 or first > at + 1):  # never copied, or the feed forgot what we lack
            log.info("suppression list: copying the shared list (replica at change %d, the feed holds %d..%d)",
                     at, first, last)
            await asyncio.to_thread(self.local.clear_replica)
            copied = 0
            async for rows in self.shared.rows():
                await asyncio.to_thread(self.local.put_rows, rows)
                copied += len(rows)
            await asyncio.to_thread(self.local.put_rows, [], last)
            log.info("suppression list: %d entries copied", copied)
        await self._pull()

    async def _pull(self) -> list[tuple[int, int, bool]]:
        """The feed's changes since the replica's last, applied: (seq, key, on the list)."""
        out = []
        while True:
            at = await asyncio.to_thread(self.local.replica_seq)
            changes = await self.shared.changes(at)
            if not changes:
                return out
            await asyncio.to_thread(self.local.apply, changes)
            out.extend((seq, k, entry is not None) for seq, k, _, entry in changes)

    async def tick(self, pending: list[dict], expire: bool) -> list[tuple[int, int, bool]]:
        """Write `pending` (raises, for the caller to keep them, when the database is away),
        expire entries when asked, and bring the feed's changes in."""
        try:
            async with self.lock:
                now = self._wall()
                if pending:
                    await self.shared.add(pending, now)
                if expire:
                    await self.shared.expire(now)
                changes = await self._pull()
        except Exception as exc:
            self._down(exc)
            raise
        if not self.up:
            self.up = True
            log.warning("suppression list: %s answers again", self.shared.where)
        return changes

    async def add(self, entries: list[dict]) -> None:
        async with self.lock:
            await self.shared.add(entries, self._wall())

    async def close(self) -> None:
        db, self.shared.db = self.shared.db, None
        if db is not None:
            db.terminate()

    def _down(self, exc: BaseException) -> None:
        if self.up:
            self.up = False
            log.warning("suppression list: %s does not answer (%s: %s); answering from the replica %s",
                        self.shared.where, type(exc).__name__, exc, self.local.path)
        db, self.shared.db = self.shared.db, None
        if db is not None:
            db.terminate()
