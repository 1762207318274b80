"""The event store in PostgreSQL (`tracking.store`), for nodes on several machines: the same
layout as the SQLite store (mta.tracking.store), one table per UTC day (`mta_events_20261202`,
`mta_event_tags_20261202`) so retention drops whole days, and `mta_pending` for stuck mail.
Rows go in with COPY, a batch at a time, from the tracker of every node; `mta trace` and
`mta stuck` read the same tables from anywhere.
"""

from __future__ import annotations

import asyncio

from mta.store.postgres import connect, create_schema, redact
from mta.tracking.events import COLUMNS, built, expand, is_merged
from mta.tracking.store import DAY, day_of, normalize_recipient, pending_changes, rows_by_day

TYPES = {"time": "DOUBLE PRECISION", "final": "SMALLINT", "attempts": "INTEGER", "code": "INTEGER"}
PENDING = """
CREATE TABLE IF NOT EXISTS mta_pending (id TEXT PRIMARY KEY, recipient TEXT, first DOUBLE PRECISION NOT NULL,
    last DOUBLE PRECISION NOT NULL, status TEXT NOT NULL, description TEXT);
CREATE INDEX IF NOT EXISTS mta_pending_last ON mta_pending (last);
"""


class SharedEvents:
    """One connection; every method may raise the driver's errors or OSError when the
    database is away (the tracker then leaves the results with the broker)."""

    def __init__(self, url: str):
        self.url = url
        self.path = redact(url)  # what log lines name
        self.db = None
        self._days: set[str] = set()

    async def start(self) -> None:
        await self.open()

    async def open(self) -> None:
        if self.db is None or self.db.is_closed():
            self.db = await connect(self.url)
            await create_schema(self.db, "tracking", PENDING)
            await self.db.execute("CREATE TEMPORARY TABLE mta_pending_batch (LIKE mta_pending) ON COMMIT DELETE ROWS")
            self._days = set(await self.days())

    async def close(self) -> None:
        if self.db is not None:
            db, self.db = self.db, None
            await db.close()

    async def days(self) -> list[str]:
        if self.db is None:
            await self.open()
        rows = await self.db.fetch("SELECT tablename FROM pg_tables WHERE tablename ~ '^mta_events_[0-9]{8}$'")
        return sorted(r[0][len("mta_events_"):] for r in rows)

    async def _day(self, day: str) -> None:
        if day in self._days:
            return
        columns = ", ".join(f"{c} {TYPES.get(c, 'TEXT')}" for c in COLUMNS)
        await create_schema(self.db, f"tracking {day}", f"""
            CREATE TABLE IF NOT EXISTS mta_events_{day} ({columns});
            CREATE INDEX IF NOT EXISTS mta_events_{day}_id ON mta_events_{day} (id);
            CREATE INDEX IF NOT EXISTS mta_events_{day}_recipient ON mta_events_{day} (recipient);
            CREATE TABLE IF NOT EXISTS mta_event_tags_{day} (tag TEXT NOT NULL, id TEXT NOT NULL);
            CREATE INDEX IF NOT EXISTS mta_event_tags_{day}_tag ON mta_event_tags_{day} (tag);
        """)
        self._days.add(day)

    async def write(self, rows: list[tuple], pending: tuple[list, list] | None = None) -> None:
        """As EventStore.write: the rows, then the pending entries, then the finished ids."""
        await self.open()
        rows = built(rows)
        by_day = rows_by_day(rows)
        for day in by_day:
            await self._day(day)
        async with self.db.transaction():
            for day, day_rows in by_day.items():
                await self.db.copy_records_to_table(f"mta_events_{day}", records=day_rows, columns=COLUMNS)
                tags = [(tag, r[1]) for r in day_rows if r[13] and (r[3] == "accepted" or is_merged(r))
                        for tag in r[13].split(",")]
                if tags:
                    await self.db.copy_records_to_table(f"mta_event_tags_{day}", records=tags, columns=("tag", "id"))
            finished, waiting = pending_changes(rows) if pending is None else pending
            if waiting:  # COPY into a scratch table, then one upsert: no statement per row
                await self.db.copy_records_to_table("mta_pending_batch", records=[
                    (e[0], normalize_recipient(e[1]) if e[1] else None, *e[2:]) for e in waiting])
                await self.db.execute(
                    "INSERT INTO mta_pending SELECT * FROM mta_pending_batch ON CONFLICT (id) DO UPDATE SET "
                    "last = GREATEST(mta_pending.last, excluded.last), status = excluded.status, "
                    "description = excluded.description")
            if finished:
                await self.db.execute("DELETE FROM mta_pending WHERE id = ANY($1::text[])", finished)

    async def _select(self, where: str, arg, since: float | None, limit: int) -> list[dict]:
        days = [d for d in await self.days() if since is None or d >= day_of(since)]
        if not days:
            return []
        union = " UNION ALL ".join(f"SELECT {', '.join(COLUMNS)} FROM mta_events_{d} WHERE {where}" for d in days)
        rows = await self.db.fetch(f"SELECT * FROM ({union}) AS e ORDER BY time LIMIT {int(limit)}", arg)
        return expand([dict(r) for r in rows])

    async def by_id(self, message_id: str, since: float | None = None, limit: int = 1000) -> list[dict]:
        await self.open()
        return await self._select("id = $1", message_id, since, limit)

    async def by_recipient(self, recipient: str, since: float | None = None, limit: int = 1000) -> list[dict]:
        await self.open()
        return await self._select("recipient = $1", normalize_recipient(recipient), since, limit)

    async def by_tag(self, tag: str, since: float | None = None, limit: int = 1000) -> list[dict]:
        await self.open()
        ids: list[str] = []
        for d in [d for d in await self.days() if since is None or d >= day_of(since)]:
            ids.extend(r[0] for r in await self.db.fetch(
                f"SELECT DISTINCT id FROM mta_event_tags_{d} WHERE tag = $1 LIMIT $2", tag, limit))
        out: list[dict] = []
        for message_id in list(dict.fromkeys(ids))[:limit]:
            out.extend(await self._select("id = $1", message_id, since, limit))
        return out

    async def stuck(self, older: float, now: float, limit: int = 1000) -> list[dict]:
        await self.open()
        rows = await self.db.fetch("SELECT id, recipient, first, last, status, description FROM mta_pending "
                                   "WHERE last < $1 ORDER BY last LIMIT $2", now - older, limit)
        out = []
        for r in rows:
            if any(e["final"] for e in await self._select("id = $1", r["id"], r["first"] - DAY, 1000)):
                await self.db.execute("DELETE FROM mta_pending WHERE id = $1", r["id"])  # its final came first
                continue
            out.append(dict(r))
        return out

    async def count_stuck(self, older: float, now: float) -> int:
        await self.open()
        return await self.db.fetchval("SELECT COUNT(*) FROM mta_pending WHERE last < $1", now - older)

    async def retain(self, keep: float, now: float) -> list[str]:
        await self.open()
        horizon = day_of(now - keep)
        dropped = [d for d in await self.days() if d < horizon]
        for d in dropped:
            await self.db.execute(f"DROP TABLE IF EXISTS mta_events_{d}; DROP TABLE IF EXISTS mta_event_tags_{d}")
            self._days.discard(d)
        await self.db.execute("DELETE FROM mta_pending WHERE last < $1", now - keep)
        return dropped


class SharedEventsSync:
    """The same for `mta trace` and `mta stuck`: EventStore's blocking calls, on a loop of its own."""

    def __init__(self, url: str):
        self.shared = SharedEvents(url)
        self.path = self.shared.path
        self.loop = asyncio.new_event_loop()

    def __getattr__(self, name: str):
        method = getattr(self.shared, name)
        return lambda *args, **kw: self.loop.run_until_complete(method(*args, **kw))

    def close(self) -> None:
        self.loop.run_until_complete(self.shared.close())
        self.loop.close()
