"""The suppression list on disk: SQLite in WAL mode (stdlib `sqlite3`), one file beside the
rules file (`<rules>.suppression.sqlite`), shared by the MTA's processes on the machine and
the `mta suppress` command.

One row per entry, keyed by its 64-bit key (mta.suppression.keys): the table is stored in
key order, so loading the index is one ordered scan. Every addition and removal also
appends to `changes`, which the running processes read every few seconds to keep their
index current (an operator's `mta suppress remove` is in force within seconds). Removals are
audited: the entry, when, and why, in `removals`.

Calls are blocking (a point query is tens of microseconds); the engine makes them in a
thread when they write.
"""

from __future__ import annotations

import csv
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from mta.suppression.keys import key, normalize

SCHEMA = """
CREATE TABLE IF NOT EXISTS suppression (
    key INTEGER PRIMARY KEY, address TEXT NOT NULL, scope TEXT NOT NULL, reason TEXT NOT NULL,
    since REAL NOT NULL, message_id TEXT, expires REAL);
CREATE INDEX IF NOT EXISTS suppression_address ON suppression (address);
CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, key INTEGER NOT NULL,
    added INTEGER NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS removals (address TEXT NOT NULL, scope TEXT NOT NULL, reason TEXT NOT NULL,
    since REAL NOT NULL, message_id TEXT, removed REAL NOT NULL, why TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS replica (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
REASONS = ("hard_bounce", "complaint", "manual")
FIELDS = ("address", "scope", "reason", "since", "message_id", "expires")
CHANGES_KEPT = 86400.0  # seconds of changes kept for processes catching up


def path_for(config_path: str | None) -> str | None:
    return None if config_path is None else config_path + ".suppression.sqlite"


class Store:
    def __init__(self, path: str):
        self.path = path
        uri = path.startswith("file:")  # a shared in-memory database (a process without a rules file)
        if not uri:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False, uri=uri)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def add(self, entries: Iterable[dict], now: float) -> int:
        """Add or replace entries ({address, scope, reason, since, message_id, expires});
        how many were new."""
        new = 0
        with self._transaction():
            for e in entries:
                address = normalize(e["address"])
                k = key(e["scope"], address)
                known = self.db.execute("SELECT 1 FROM suppression WHERE key = ?", (k,)).fetchone()
                self.db.execute("INSERT OR REPLACE INTO suppression VALUES (?, ?, ?, ?, ?, ?, ?)",
                                (k, address, e["scope"], e["reason"], e.get("since", now), e.get("message_id"),
                                 e.get("expires")))
                if known is None:
                    new += 1
                    self.db.execute("INSERT INTO changes (key, added, at) VALUES (?, 1, ?)", (k, now))
        return new

    def remove(self, address: str, scope: str, why: str, now: float) -> dict | None:
        """Take an entry off the list (audited); the entry that was there, or None."""
        k = key(scope, address)
        with self._transaction():
            entry = self.get_key(k)
            if entry is None:
                return None
            self.db.execute("DELETE FROM suppression WHERE key = ?", (k,))
            self.db.execute("INSERT INTO removals VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (entry["address"], entry["scope"], entry["reason"], entry["since"], entry["message_id"],
                             now, why))
            self.db.execute("INSERT INTO changes (key, added, at) VALUES (?, 0, ?)", (k, now))
        return entry

    def expire(self, now: float) -> int:
        """Remove the entries whose time is up (audited as expired)."""
        rows = self.db.execute("SELECT address, scope FROM suppression WHERE expires IS NOT NULL AND expires <= ?",
                               (now,)).fetchall()
        for address, scope in rows:
            self.remove(address, scope, "expired", now)
        self.db.execute("DELETE FROM changes WHERE at < ?", (now - CHANGES_KEPT,))
        return len(rows)

    def get_key(self, k: int) -> dict | None:
        row = self.db.execute(f"SELECT {', '.join(FIELDS)} FROM suppression WHERE key = ?", (k,)).fetchone()
        return None if row is None else dict(zip(FIELDS, row))

    def find(self, address: str) -> list[dict]:
        """Every entry of an address, in any scope."""
        rows = self.db.execute(f"SELECT {', '.join(FIELDS)} FROM suppression WHERE address = ? ORDER BY scope",
                               (normalize(address),)).fetchall()
        return [dict(zip(FIELDS, row)) for row in rows]

    def keys(self) -> Iterator[int]:
        """Every key, in order (the table is stored by key)."""
        for (k,) in self.db.execute("SELECT key FROM suppression ORDER BY key"):
            yield k

    def last_change(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0]

    def changes(self, after: int) -> list[tuple[int, int, int]]:
        """(seq, key, added) since `after`."""
        return self.db.execute("SELECT seq, key, added FROM changes WHERE seq > ? ORDER BY seq LIMIT 100000",
                               (after,)).fetchall()

    def entries(self) -> Iterator[dict]:
        for row in self.db.execute(f"SELECT {', '.join(FIELDS)} FROM suppression ORDER BY address, scope"):
            yield dict(zip(FIELDS, row))

    def removals(self) -> list[dict]:
        fields = ("address", "scope", "reason", "since", "message_id", "removed", "why")
        return [dict(zip(fields, row)) for row in self.db.execute("SELECT * FROM removals ORDER BY removed")]

    def export_csv(self, out) -> int:
        return write_csv(self.entries(), out)

    # ---- a replica of the shared list (mta.suppression.shared): its entries, and the last
    # change of the shared feed they include

    def replica_seq(self) -> int:
        row = self.db.execute("SELECT value FROM replica WHERE name = 'seq'").fetchone()
        return 0 if row is None else row[0]

    def clear_replica(self) -> None:
        """Before a copy of the whole shared list: nothing, and no change applied (a copy
        cut short is started again by the next process)."""
        with self._transaction():
            self.db.execute("DELETE FROM suppression")
            self._set_seq(0)

    def put_rows(self, rows: list[tuple], seq: int | None = None) -> None:
        """Rows of the shared list, (key, address, scope, reason, since, message_id, expires);
        with `seq`, the copy is complete up to that change."""
        with self._transaction():
            self.db.executemany("INSERT OR REPLACE INTO suppression VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            if seq is not None:
                self._set_seq(seq)

    def apply(self, changes: list[tuple]) -> None:
        """(seq, key, added, entry or None) from the shared feed: each key as it is there now."""
        if not changes:
            return
        with self._transaction():
            for _, k, _, entry in changes:
                if entry is None:
                    self.db.execute("DELETE FROM suppression WHERE key = ?", (k,))
                else:
                    self.db.execute("INSERT OR REPLACE INTO suppression VALUES (?, ?, ?, ?, ?, ?, ?)",
                                    (k, *(entry[f] for f in FIELDS)))
            self._set_seq(max(changes[-1][0], self.replica_seq()))

    def _set_seq(self, seq: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO replica VALUES ('seq', ?)", (seq,))

    def _transaction(self):
        return _Transaction(self.db)


def write_csv(entries: Iterable[dict], out) -> int:
    """Entries as CSV with a header (what `mta suppress import` reads); how many."""
    writer = csv.writer(out)
    writer.writerow(FIELDS)
    n = 0
    for entry in entries:
        writer.writerow([entry[f] if entry[f] is not None else "" for f in FIELDS])
        n += 1
    return n


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): writers from several processes queue
    on the file lock instead of failing half-way."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, exc, tb):
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
        return False
