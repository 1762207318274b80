"""The suppression list in PostgreSQL (`suppression.store`), for nodes on several machines.

The same tables as the SQLite store (mta.suppression.store), in the shared database: the
entries, a feed of changes, the audited removals. Every node keeps its own SQLite file as
a replica of the entries (`<rules>.suppression.sqlite`) and answers every message from
memory and that file, never with a round trip: each second it writes what it added and
reads the feed since the last change it applied, into the replica and its index. A node
that starts with no replica, or one older than the feed keeps (a day), copies the whole
list first. While the database does not answer, a node keeps answering from its replica
and keeps its additions until it answers again.

Writers take one advisory lock per transaction, so the feed's numbers become visible in
order: a reader that saw change n has seen every change before it. Writes are few (a
hard bounce, a complaint, an operator), so the lock costs nothing that matters.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

from mta.store.postgres import connect, create_schema, redact
from mta.suppression.keys import key, normalize
from mta.suppression.store import CHANGES_KEPT, FIELDS, write_csv

SCHEMA = """
CREATE TABLE IF NOT EXISTS mta_suppression (
    key BIGINT PRIMARY KEY, address TEXT NOT NULL, scope TEXT NOT NULL, reason TEXT NOT NULL,
    since DOUBLE PRECISION NOT NULL, message_id TEXT, expires DOUBLE PRECISION);
CREATE INDEX IF NOT EXISTS mta_suppression_address ON mta_suppression (address);
CREATE INDEX IF NOT EXISTS mta_suppression_expires ON mta_suppression (expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS mta_suppression_changes (seq BIGSERIAL PRIMARY KEY, key BIGINT NOT NULL,
    added BOOLEAN NOT NULL, at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS mta_suppression_removals (address TEXT NOT NULL, scope TEXT NOT NULL,
    reason TEXT NOT NULL, since DOUBLE PRECISION NOT NULL, message_id TEXT, removed DOUBLE PRECISION NOT NULL,
    why TEXT NOT NULL);
"""
WRITE_LOCK = 0x6D74_6173_7570  # the advisory lock every writing transaction takes first
BATCH = 10_000  # rows per statement when copying or importing


class SharedList:
    """One connection to the shared list; every method may raise the driver's errors or
    OSError when the database is away (the caller keeps what it wanted to write)."""

    def __init__(self, url: str):
        self.url = url
        self.where = redact(url)
        self.db = None

    async def open(self) -> None:
        if self.db is None or self.db.is_closed():
            self.db = await connect(self.url)
            await create_schema(self.db, "suppression", SCHEMA)

    async def close(self) -> None:
        if self.db is not None:
            db, self.db = self.db, None
            await db.close()

    async def _writing(self):
        await self.open()
        transaction = self.db.transaction()
        await transaction.start()
        await self.db.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
        return transaction

    async def add(self, entries: Iterable[dict], now: float) -> int:
        """Add or replace entries ({address, scope, reason, since, message_id, expires});
        how many were new."""
        rows = []
        for e in entries:
            address = normalize(e["address"])
            rows.append((key(e["scope"], address), address, e["scope"], e["reason"], float(e.get("since", now)),
                         e.get("message_id"), e.get("expires")))
        new = 0
        transaction = await self._writing()
        try:
            for start in range(0, len(rows), BATCH):
                chunk = rows[start:start + BATCH]
                known = {r["key"] for r in await self.db.fetch(
                    "SELECT key FROM mta_suppression WHERE key = ANY($1::bigint[])", [r[0] for r in chunk])}
                await self.db.executemany(
                    "INSERT INTO mta_suppression VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (key) DO UPDATE SET "
                    "address = EXCLUDED.address, scope = EXCLUDED.scope, reason = EXCLUDED.reason, "
                    "since = EXCLUDED.since, message_id = EXCLUDED.message_id, expires = EXCLUDED.expires", chunk)
                fresh = list(dict.fromkeys(r[0] for r in chunk if r[0] not in known))
                await self.db.executemany("INSERT INTO mta_suppression_changes (key, added, at) VALUES ($1, TRUE, $2)",
                                          [(k, now) for k in fresh])
                new += len(fresh)
        except BaseException:
            await transaction.rollback()
            raise
        await transaction.commit()
        return new

    async def remove(self, address: str, scope: str, why: str, now: float) -> dict | None:
        """Take an entry off the list (audited); the entry that was there, or None."""
        transaction = await self._writing()
        try:
            entry = await self._remove(key(scope, address), why, now)
        except BaseException:
            await transaction.rollback()
            raise
        await transaction.commit()
        return entry

    async def _remove(self, k: int, why: str, now: float) -> dict | None:
        row = await self.db.fetchrow(f"DELETE FROM mta_suppression WHERE key = $1 RETURNING {', '.join(FIELDS)}", k)
        if row is None:
            return None
        await self.db.execute("INSERT INTO mta_suppression_removals VALUES ($1, $2, $3, $4, $5, $6, $7)",
                              row["address"], row["scope"], row["reason"], row["since"], row["message_id"], now, why)
        await self.db.execute("INSERT INTO mta_suppression_changes (key, added, at) VALUES ($1, FALSE, $2)", k, now)
        return dict(row)

    async def expire(self, now: float) -> int:
        """Remove the entries whose time is up (audited as expired); forget old changes, but
        never the last one (a replica compares its last change with the feed's first)."""
        transaction = await self._writing()
        try:
            keys = [r["key"] for r in await self.db.fetch(
                "SELECT key FROM mta_suppression WHERE expires IS NOT NULL AND expires <= $1", now)]
            for k in keys:
                await self._remove(k, "expired", now)
            await self.db.execute("DELETE FROM mta_suppression_changes WHERE at < $1 AND seq < "
                                  "(SELECT MAX(seq) FROM mta_suppression_changes)", now - CHANGES_KEPT)
        except BaseException:
            await transaction.rollback()
            raise
        await transaction.commit()
        return len(keys)

    async def feed(self) -> tuple[int, int]:
        """(first, last) change the feed holds; (0, 0) when it holds none."""
        await self.open()
        row = await self.db.fetchrow("SELECT COALESCE(MIN(seq), 0), COALESCE(MAX(seq), 0) FROM mta_suppression_changes")
        return row[0], row[1]

    async def changes(self, after: int, limit: int = 100_000) -> list[tuple]:
        """(seq, key, added, entry or None) since `after`: the entry as it is now."""
        await self.open()
        rows = await self.db.fetch(
            f"SELECT c.seq, c.key, c.added, {', '.join('s.' + f for f in FIELDS)} FROM mta_suppression_changes c "
            "LEFT JOIN mta_suppression s ON s.key = c.key WHERE c.seq > $1 ORDER BY c.seq LIMIT $2", after, limit)
        return [(r[0], r[1], r[2], dict(zip(FIELDS, tuple(r)[3:])) if r[3] is not None else None) for r in rows]

    async def rows(self) -> AsyncIterator[list[tuple]]:
        """Every entry as (key, address, scope, reason, since, message_id, expires), in batches."""
        await self.open()
        async with self.db.transaction():
            batch = []
            async for r in self.db.cursor(f"SELECT key, {', '.join(FIELDS)} FROM mta_suppression", prefetch=BATCH):
                batch.append(tuple(r))
                if len(batch) >= BATCH:
                    yield batch
                    batch = []
            if batch:
                yield batch

    async def find(self, address: str) -> list[dict]:
        await self.open()
        rows = await self.db.fetch(f"SELECT {', '.join(FIELDS)} FROM mta_suppression WHERE address = $1 ORDER BY scope",
                                   normalize(address))
        return [dict(r) for r in rows]

    async def entries(self) -> list[dict]:
        await self.open()
        return [dict(r) for r in await self.db.fetch(
            f"SELECT {', '.join(FIELDS)} FROM mta_suppression ORDER BY address, scope")]

    async def removals(self) -> list[dict]:
        await self.open()
        return [dict(r) for r in await self.db.fetch("SELECT * FROM mta_suppression_removals ORDER BY removed")]


class SharedListSync:
    """The same for `mta suppress`: Store's blocking calls, on a loop of its own."""

    def __init__(self, url: str):
        self.shared = SharedList(url)
        self.path = self.shared.where
        self.loop = asyncio.new_event_loop()

    def _run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def add(self, entries: Iterable[dict], now: float) -> int:
        return self._run(self.shared.add(list(entries), now))

    def remove(self, address: str, scope: str, why: str, now: float) -> dict | None:
        return self._run(self.shared.remove(address, scope, why, now))

    def find(self, address: str) -> list[dict]:
        return self._run(self.shared.find(address))

    def entries(self) -> list[dict]:
        return self._run(self.shared.entries())

    def removals(self) -> list[dict]:
        return self._run(self.shared.removals())

    def export_csv(self, out) -> int:
        return write_csv(self.entries(), out)

    def close(self) -> None:
        self._run(self.shared.close())
        self.loop.close()
