"""The event store in SQLite (SPEC §9): one file beside the rules file (`<rules>.events.sqlite`,
WAL), shared by the MTA's processes on the machine and read by `mta trace` and `mta stuck`.

One table per UTC day (`events_20261202`), so retention drops whole days, never a slow
DELETE; each indexed by id, recipient (as stored: the domain lower-cased) and time, with
its tags in `tags_<day>` (tag, id). A lookup asks each day in range: over 30 days that is 30
index probes, milliseconds whatever the size. `pending` holds each message not finished
yet (accepted, deferred or held: its last event), which is what `stuck` reads.

Writes come in batches, one transaction each (mta.tracking.tracker, mta.tracking.writer).
The tracker says what a batch does to `pending` (the messages in flight it keeps in memory
until they are silent for a while); a batch written without it (the CLI's tests, the
benchmark) derives it from its rows.
"""

from __future__ import annotations

import re
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from mta.tracking.events import COLUMNS, built, expand, is_merged

DAY = 86400.0
_DAY_TABLE = re.compile(r"events_(\d{8})\Z")
PENDING = """
CREATE TABLE IF NOT EXISTS pending (id TEXT PRIMARY KEY, recipient TEXT, first REAL NOT NULL, last REAL NOT NULL,
    status TEXT NOT NULL, description TEXT);
CREATE INDEX IF NOT EXISTS pending_last ON pending (last);
"""
NOT_FINAL = ("accepted", "deferred", "held")


def pending_changes(rows: list[tuple]) -> tuple[list[str], list[tuple]]:
    """What a batch does to the pending messages, by each id's last row in it: the ids
    finished (a final row, a late one too), and the entries (id, recipient, first, last,
    status, description) of those still waiting (accepted, deferred, held). An id accepted
    and finished in one batch is finished."""
    last: dict[str, tuple] = {}
    for r in rows:
        if r[4] or r[3] in NOT_FINAL:
            last[r[1]] = r
    finished = [i for i, r in last.items() if r[4]]
    return finished, [(r[1], r[2], r[0], r[0], r[3], r[12]) for r in last.values() if not r[4]]


def path_for(config_path: str | None) -> str | None:
    return None if config_path is None else config_path + ".events.sqlite"


def day_of(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y%m%d")


def normalize_recipient(address: str) -> str:
    local, at, domain = address.strip().rpartition("@")
    return f"{local}@{domain.lower().rstrip('.')}" if at else address.strip()


def rows_by_day(rows: list[tuple]) -> dict[str, list[tuple]]:
    """A batch's rows by their UTC day, each with its recipient as stored (normalized).
    Per row on the writer's hot path: the day is formatted only when a row leaves the
    previous row's day, and each recipient (a message's rows share it) normalized once."""
    out: dict[str, list[tuple]] = {}
    bucket: list[tuple] = []
    start = end = 0.0
    normalized: dict[str, str] = {}
    for row in rows:
        t = row[0]
        if not start <= t < end:
            start = t - t % DAY
            end = start + DAY
            bucket = out.setdefault(day_of(t), [])
        recipient = row[2]
        if recipient:
            recipient = normalized.get(recipient) or normalized.setdefault(recipient, normalize_recipient(recipient))
        bucket.append((row[0], row[1], recipient or None, *row[3:]))
    return out


class EventStore:
    def __init__(self, path: str):
        self.path = path
        if not path.startswith("file:"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False,
                                  uri=path.startswith("file:"))
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(PENDING)
        self._days: set[str] = set(self.days())

    def close(self) -> None:
        self.db.close()

    def days(self) -> list[str]:
        """The days stored, oldest first."""
        names = [r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return sorted(m[1] for n in names if (m := _DAY_TABLE.match(n)))

    def _day(self, day: str) -> None:
        if day in self._days:
            return
        self.db.executescript(f"""
            CREATE TABLE IF NOT EXISTS events_{day} ({', '.join(COLUMNS)});
            CREATE INDEX IF NOT EXISTS events_{day}_id ON events_{day} (id);
            CREATE INDEX IF NOT EXISTS events_{day}_recipient ON events_{day} (recipient);
            CREATE TABLE IF NOT EXISTS tags_{day} (tag TEXT NOT NULL, id TEXT NOT NULL);
            CREATE INDEX IF NOT EXISTS tags_{day}_tag ON tags_{day} (tag);
        """)
        self._days.add(day)

    def write(self, rows: list[tuple], pending: tuple[list, list] | None = None) -> None:
        """Rows (mta.tracking.events.COLUMNS) in one transaction, with what they do to the
        pending table: `pending` (waiting entries written first, then the finished ids
        deleted), or derived from the rows."""
        rows = built(rows)
        by_day = rows_by_day(rows)
        for day in by_day:
            self._day(day)
        marks = ", ".join("?" * len(COLUMNS))
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for day, day_rows in by_day.items():
                self.db.executemany(f"INSERT INTO events_{day} VALUES ({marks})", day_rows)
                tags = [(tag, r[1]) for r in day_rows if r[13] and (r[3] == "accepted" or is_merged(r))
                        for tag in r[13].split(",")]
                if tags:
                    self.db.executemany(f"INSERT INTO tags_{day} VALUES (?, ?)", tags)
            finished, waiting = pending_changes(rows) if pending is None else pending
            if waiting:
                self.db.executemany(
                    "INSERT INTO pending VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET last = "
                    "MAX(last, excluded.last), status = excluded.status, description = excluded.description",
                    [(e[0], normalize_recipient(e[1]) if e[1] else None, *e[2:]) for e in waiting])
            if finished:
                self.db.executemany("DELETE FROM pending WHERE id = ?", [(i,) for i in finished])
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def _select(self, where: str, args: tuple, since: float | None, limit: int) -> list[dict]:
        days = self.days()
        if since is not None:
            days = [d for d in days if d >= day_of(since)]
        if not days:
            return []
        union = " UNION ALL ".join(f"SELECT * FROM events_{d} WHERE {where}" for d in days)
        rows = self.db.execute(f"SELECT * FROM ({union}) ORDER BY time LIMIT {int(limit)}", args * len(days))
        return expand([dict(zip(COLUMNS, r)) for r in rows])

    def by_id(self, message_id: str, since: float | None = None, limit: int = 1000) -> list[dict]:
        return self._select("id = ?", (message_id,), since, limit)

    def by_recipient(self, recipient: str, since: float | None = None, limit: int = 1000) -> list[dict]:
        return self._select("recipient = ?", (normalize_recipient(recipient),), since, limit)

    def by_tag(self, tag: str, since: float | None = None, limit: int = 1000) -> list[dict]:
        days = [d for d in self.days() if since is None or d >= day_of(since)]
        ids: list[str] = []
        for d in days:
            ids.extend(r[0] for r in self.db.execute(f"SELECT DISTINCT id FROM tags_{d} WHERE tag = ? LIMIT ?",
                                                       (tag, limit)))
        ids = list(dict.fromkeys(ids))[:limit]
        out: list[dict] = []
        for message_id in ids:
            out.extend(self.by_id(message_id, since))
        return out

    def stuck(self, older: float, now: float, limit: int = 1000) -> list[dict]:
        """Messages accepted whose last event (accepted, deferred, held) is older than `older`
        seconds and that have no final event."""
        rows = self.db.execute("SELECT id, recipient, first, last, status, description FROM pending WHERE last < ? "
                               "ORDER BY last LIMIT ?", (now - older, limit)).fetchall()
        out = []
        for message_id, recipient, first, last, status, description in rows:
            if any(e["final"] for e in self.by_id(message_id, since=first - DAY)):
                self.db.execute("DELETE FROM pending WHERE id = ?", (message_id,))  # its final came first
                continue
            out.append({"id": message_id, "recipient": recipient, "first": first, "last": last, "status": status,
                        "description": description})
        return out

    def count_stuck(self, older: float, now: float) -> int:
        return self.db.execute("SELECT COUNT(*) FROM pending WHERE last < ?", (now - older,)).fetchone()[0]

    def retain(self, keep: float, now: float) -> list[str]:
        """Drop the days older than `keep` seconds (and pending messages silent that long)."""
        horizon = day_of(now - keep)
        dropped = [d for d in self.days() if d < horizon]
        for d in dropped:
            self.db.execute(f"DROP TABLE IF EXISTS events_{d}")
            self.db.execute(f"DROP TABLE IF EXISTS tags_{d}")
            self._days.discard(d)
        self.db.execute("DELETE FROM pending WHERE last < ?", (now - keep,))
        return dropped
