"""The list as the engine uses it (SPEC §8): asked about every message at intake, fed by
hard bounces, kept current from the store.

At start the index is loaded from the store (10 million entries: about 16 s and 80 MB
here, benchmarks/suppression.py). A message is looked up in its scopes (global, its
source, its sender's domain); an empty list costs one comparison. A hit is confirmed in
the store, which also gives the reason, time and message for the `suppressed` result.
Additions (hard bounces) go into the index at once and to the store every second; the
store's changes (`mta suppress`, other processes, expiry) come into the index every
second. Reads on the event loop use one connection, the writes and the change feed
another, in a thread.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter

from mta.inbound.status import is_hard
from mta.intake.idn import a_labels
from mta.suppression.index import Index
from mta.suppression.keys import key_of, normalize, scope_name
from mta.suppression.store import Store, path_for

log = logging.getLogger("mta.suppression")

TICK = 1.0  # seconds between writes of new entries and reads of the store's changes
EXPIRE_EVERY = 60  # ticks between sweeps for expired entries
STOP_WAIT = 5.0  # seconds a stopping node waits for the shared list to take its last entries
_MEMORY = itertools.count()


class Suppression:
    def __init__(self, config, config_path: str | None, clock):
        self.config = config  # mta.config.model.Suppression
        self._wall = clock.wall
        self._sleep = clock.sleep
        path = path_for(config_path) or f"file:mta-suppression-{next(_MEMORY)}?mode=memory&cache=shared"
        self.reader, self.writer = Store(path), Store(path)
        self.index = Index()
        self.seen = 0
        self.pending: list[dict] = []
        self.counts: dict[str, int] = {}  # suppressed messages, by the entry's reason
        self.added = 0  # entries added from hard bounces
        self._reporting = asyncio.Lock()
        self._reports: Store | None = None  # the inbound listeners' own connection (`report`)
        self.replica = None  # with a shared list (suppression.store): this node's copy of it
        if config.store:
            from mta.suppression.replica import Replica
            from mta.suppression.shared import SharedList

            self.replica = Replica(SharedList(config.store), self.writer, clock.wall)

    async def start(self) -> None:
        """Before the first message: the shared list caught up with (`suppression.store`), the
        index loaded."""
        if self.replica is not None:
            await self.replica.start()
        self.load()

    def load(self) -> None:
        self.seen = self.reader.replica_seq() if self.replica is not None else self.reader.last_change()
        self.index = Index(self.reader.keys())
        log.info("suppression list: %d entries (%s)", len(self.index), self.reader.path)

    def check(self, job) -> dict | None:
        """The entry that suppresses this message, if any."""
        if not len(self.index):
            return None
        recipient = job.recipient
        normalized = f"{recipient.local}@{recipient.ascii_domain}"
        for scope in self._scopes(job):
            k = key_of(scope, normalized)
            if k in self.index:
                entry = self.reader.get_key(k)
                if entry is not None and (entry["expires"] is None or entry["expires"] > self._wall()):
                    self.counts[entry["reason"]] = self.counts.get(entry["reason"], 0) + 1
                    return entry
        return None

    @staticmethod
    def _scopes(job):
        yield "global"
        source = job.doc.get("source")
        if isinstance(source, str) and source:
            yield scope_name("source", source)
        if job.sender is not None:
            yield scope_name("sender_domain", job.sender.ascii_domain)

    def bounced(self, job, code: int | None, enhanced: str | None, text: str) -> None:
        """A bounce from the recipient's server: a hard one (5.1.x, not about rate, spam,
        policy or blocking) puts the recipient on the list when `hard_bounces` is on."""
        if not self.config.hard_bounces or code is None or not is_hard(enhanced, f"{code} {text}"):
            return
        self.add(job, "hard_bounce")

    def add(self, job, reason: str) -> None:
        scope = self._scope_for(job)
        address = normalize(f"{job.recipient.local}@{job.recipient.ascii_domain}")
        now = self._wall()
        expires = now + self.config.expire if self.config.expire else None
        self.index.add(key_of(scope, address))
        self.pending.append({"address": address, "scope": scope, "reason": reason, "since": now,
                             "message_id": str(job.id), "expires": expires})
        self.added += 1

    def _scope_for(self, job) -> str:
        scope = self.config.scope
        if scope == "source" and isinstance(job.doc.get("source"), str) and job.doc["source"]:
            return scope_name("source", job.doc["source"])
        if scope == "sender_domain" and job.sender is not None:
            return scope_name("sender_domain", job.sender.ascii_domain)
        return "global"

    async def report(self, entries: list[tuple[str, str, str | None]]) -> dict[str, int]:
        """Entries from late hard bounces and complaints (mta.inbound): (address, reason,
        message id), global (a report names no source), written to the store in one
        transaction before this returns: the reporter hears 250 only then. How many were
        added, by reason (the configuration may not want some)."""
        wanted = [e for e in entries if (self.config.hard_bounces if e[1] == "hard_bounce" else self.config.complaints)]
        if not wanted:
            return {}
        now = self._wall()
        expires = now + self.config.expire if self.config.expire else None
        rows = [{"address": _ascii_form(normalize(address)), "scope": "global", "reason": reason, "since": now,
                 "message_id": message_id, "expires": expires} for address, reason, message_id in wanted]
        if self.replica is not None:  # the shared list: committed there before this returns
            await self.replica.add(rows)
        else:
            async with self._reporting:
                if self._reports is None:
                    self._reports = Store(self.writer.path)
                    # The 250 promises the entry: each commit waits for the disk (the list's
                    # own synchronous=NORMAL in WAL mode may lose the last ones to a power loss).
                    self._reports.db.execute("PRAGMA synchronous=FULL")
                await asyncio.to_thread(self._reports.add, rows, now)
        for row in rows:
            self.index.add(key_of("global", row["address"]))
        return dict(Counter(row["reason"] for row in rows))

    async def follow(self) -> None:
        """Write what was added, read what changed; runs until cancelled."""
        for tick in itertools.count(1):
            await self._sleep(TICK)
            pending, self.pending = self.pending, []
            expire = tick % EXPIRE_EVERY == 0
            try:
                if self.replica is not None:
                    changes = await self.replica.tick(pending, expire)
                else:
                    changes = await asyncio.to_thread(self._tick, pending, expire)
            except Exception:  # a locked or broken file, a database away: keep the entries, try again
                if self.replica is None:
                    log.exception("suppression list: writing to %s failed", self.writer.path)
                self.pending = pending + self.pending
                continue
            for seq, k, added in changes:
                self.seen = seq
                (self.index.add if added else self.index.remove)(k)

    def _tick(self, pending: list[dict], expire: bool) -> list:
        now = self._wall()
        if pending:
            self.writer.add(pending, now)
        if expire:
            self.writer.expire(now)
        return self.writer.changes(self.seen)

    async def stop(self) -> None:
        """At the end: what was added since the last second, into the shared list if there
        is one (else, and when it does not answer, into this node's file), then closed."""
        if self.replica is not None:
            if self.pending:
                try:
                    async with asyncio.timeout(STOP_WAIT):
                        await self.replica.add(self.pending)
                    self.pending = []
                except Exception:
                    log.warning("suppression list: %d new entries kept in %s only: %s did not take them",
                                len(self.pending), self.writer.path, self.replica.shared.where)
            await self.replica.close()
        self.close()

    def close(self) -> None:
        if self.pending:
            self.writer.add(self.pending, self._wall())
            self.pending = []
        self.reader.close()
        self.writer.close()
        if self._reports is not None:
            self._reports.close()


def _ascii_form(address: str) -> str:
    """A reported address as `check` looks it up: its domain in A-labels, as intake gives
    every message's (an SMTPUTF8 report names it as the receiver wrote it)."""
    local, at, domain = address.rpartition("@")
    if not at or domain.isascii():
        return address
    return f"{local}@{a_labels(domain) or domain}"
