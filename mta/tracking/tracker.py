"""The tracker: feeds the event store, inside `mta run` (SPEC §9).

Each process writes what it saw itself: a message accepted, held and why, and every result
it settled (the same facts it publishes on mta.results), plus the late bounces and
complaints its inbound listeners publish. Why not a consumer of its own queue bound to
mta.results, as a separate tracker could be: measured on the e2e benchmark, a second
delivery of every result (the broker's quorum-queue write, delivery and ack, and the
client's frame parsing per result) cost more than the store itself; here a result costs a
tuple appended on the event loop. What it gives up: the events of the last second
of a process that dies (the results themselves are on mta.results, the mail is safe).
Several processes or nodes write to the same store: the SQLite file of the machine, or
PostgreSQL (`tracking.store`).

The rows are written in batches (every quarter second, at most 1,000) by a process of its own
(SQLite) or over asyncpg's connection (PostgreSQL). A final result or an accepted event is
handed over as the facts at hand (the result as published, the job's fields), and its row is
built there (mta.tracking.events.built): in the SQLite writer's process, off the engine's
core. The messages in flight (accepted, no result yet) are kept in memory, not in the store's
pending table: most finish within a second, and writing each there and deleting it again was
a quarter of the store's work per message. One goes to the table when it has been silent for IN_MEMORY seconds (at most half
of `stuck_after`), when it is deferred or held (it then waits in the broker, where any
process may take it up), and when the process stops; a final result deletes it there. So
`mta stuck` sees a message in flight once it is IN_MEMORY seconds old, long before it counts
as stuck; what a crashed process held in memory it loses (the broker delivers that mail
again, and the next process records it as accepted). Likewise a message's accepted event
waits up to ACCEPT_WAIT for its final: a message finished within a second (most, at full
speed) is one row, its final carrying when it was accepted (mta.tracking.events.merged);
`mta trace` shows both events. While the store does not take them they wait,
up to MAX_WAITING, and are tried again every RETRY seconds; said once, and once when it
works again. It also counts the messages accepted and silent for longer than
`tracking.stuck_after` (`mta_stuck_messages`, every 10 s) and drops the days past
`tracking.retention`.
"""

from __future__ import annotations

import asyncio
import logging

from mta.tracking import events
from mta.tracking.store import NOT_FINAL, EventStore

log = logging.getLogger("mta.tracking")

FLUSH_EVERY = 0.25  # seconds between batch writes
BATCH = 1000  # rows written at most at once (the writer holds a batch three times over while it writes it)
COUNT_EVERY = 10.0  # seconds between counts of stuck messages
RETAIN_EVERY = 3600.0  # seconds between drops of old days
RETRY = 5.0  # seconds between tries while the store does not take a batch
MAX_WAITING = 1_000_000  # events kept while the store is away (the oldest go first): about 300 MB
IN_MEMORY = 30.0  # seconds a message in flight is kept in memory before the pending table has it
ACCEPT_WAIT = 1.0  # seconds an accepted event waits for its final, to be written with it as one row


class InThread:
    """A SQLite event store's calls, made in a thread (each store has its own connection)."""

    def __init__(self, store: EventStore):
        self.store = store
        self.path = store.path

    async def start(self) -> None:
        pass

    async def write(self, rows: list[tuple], pending: tuple[list, list] | None = None) -> None:
        await asyncio.to_thread(self.store.write, rows, pending)

    async def count_stuck(self, older: float, now: float) -> int:
        return await asyncio.to_thread(self.store.count_stuck, older, now)

    async def retain(self, keep: float, now: float) -> list[str]:
        return await asyncio.to_thread(self.store.retain, keep, now)

    async def close(self) -> None:
        self.store.close()


def stores(config, path: str) -> tuple:
    """The event store's writer and a connection that counts: PostgreSQL with
    `tracking.store` (the database does the work), else the SQLite file at `path`, written
    by a process of its own (mta.tracking.writer); a file in memory (no rules file) in a
    thread."""
    if config.store:
        from mta.tracking.shared import SharedEvents

        return SharedEvents(config.store), SharedEvents(config.store)
    if path.startswith("file:"):
        return InThread(EventStore(path)), InThread(EventStore(path))
    from mta.tracking.writer import WriterProcess

    return WriterProcess(path), InThread(EventStore(path))


class Tracker:
    def __init__(self, config, path: str, clock):
        self.config = config  # mta.config.Tracking
        self.writer, self.store = stores(config, path)
        self._wall, self._sleep = clock.wall, clock.sleep
        self.local: list[tuple] = []  # rows not written yet
        self.fresh: dict[str, tuple] = {}  # id -> (job, accepted at, attempts): no row yet, oldest first
        self.in_flight: dict[str, tuple] = {}  # the same, not in the pending table, oldest first
        self.waiting: dict[str, tuple] = {}  # pending entries for the table, not written yet
        self.finished: list[str] = []  # ids to delete from the table, not written yet
        self.in_memory = min(IN_MEMORY, config.stuck_after / 2)
        self.stuck = 0  # messages silent past stuck_after (the gauge)
        self.stored = 0
        self.down = False
        self._retry_at = 0.0

    # ---- what the engine tells it (on the event loop, per message: a tuple appended)

    def accepted(self, job, redelivered: bool = False) -> None:
        """A message consumed; `redelivered` (a process that had it stopped or died, and may
        have written it to the pending table): into the table at once, so its final deletes it."""
        now = self._wall()
        if redelivered:
            row = events.local(job, "accepted", now)
            self.local.append(row)
            self.waiting[row[1]] = (row[1], row[2], now, now, "accepted", None)
            return
        message_id = str(job.id)
        if message_id in self.fresh:  # the same id twice at once: the first keeps its own row
            self._accepted_row(message_id)
        self.in_flight.pop(message_id, None)  # (re-inserted last: the dicts stay oldest first)
        self.fresh[message_id] = self.in_flight[message_id] = (job, now, job.attempts)

    def settled(self, job, status: str, bounce: str | None, result: bytes) -> None:
        """A result the engine settled (`result`: its document as published on mta.results,
        final or deferred). A final's row is built by the writer from `result`; here, per
        message, a tuple of what is at hand."""
        if status == "deferred":  # waits in the broker: its pending entry needs the row now
            row = events.from_job(job, status, bounce, self._wall())
            self._accepted_row(row[1])
            self.local.append(row)
            self._waits(row)
            return
        message_id = str(job.id)
        fresh = self.fresh.pop(message_id, None)
        self.local.append((events.SETTLED, self._wall(), None if fresh is None else fresh[1], message_id,
                           job.recipient.text, status, bounce, job.lane, result))
        self._finished(message_id)

    def result(self, doc: dict) -> None:
        """A result published by someone else in this process (a late bounce, a complaint)."""
        row = events.from_result(doc, self._wall())
        self._accepted_row(row[1])
        self.local.append(row)
        if row[4]:
            self._finished(row[1])
        elif row[3] in NOT_FINAL:
            self._waits(row)

    def held(self, job, why: str, delay: float) -> None:
        row = events.local(job, "held", self._wall(), f"not tried: {why}; back in {delay:.0f}s",
                           {"held": why, "for": delay})
        self._accepted_row(row[1])
        self.local.append(row)
        self._waits(row)

    def _accepted_row(self, message_id: str) -> None:
        """A fresh message's accepted event as a row of its own (before any later event)."""
        fresh = self.fresh.pop(message_id, None)
        if fresh is not None:
            job, t, attempts = fresh
            self.local.append((events.ACCEPTED, t, message_id, job.recipient.text, attempts, job.lane, job.tags,
                               job.doc.get("source")))

    def _waits(self, row: tuple) -> None:
        """A message back in the broker (deferred, held): into the pending table."""
        entry = self.in_flight.pop(row[1], None)
        self.waiting[row[1]] = (row[1], row[2], row[0] if entry is None else entry[1], row[0], row[3], row[12])

    def _finished(self, message_id: str) -> None:
        if self.in_flight.pop(message_id, None) is None:  # the table may have it (this or another process)
            self.waiting.pop(message_id, None)
            self.finished.append(message_id)

    def _due(self, now: float, everything: bool = False) -> None:
        """Accepted events ACCEPT_WAIT old with no final yet: rows of their own; messages in
        flight silent for `in_memory` seconds: into the pending table (or all of both).
        Each dict is walked once from its oldest entry: taking the first entry again after
        each removal would scan the removed slots at its front every time."""
        horizon = now - ACCEPT_WAIT
        due = []
        for message_id, entry in self.fresh.items():
            if entry[1] >= horizon and not everything:
                break
            due.append(message_id)
        for message_id in due:
            self._accepted_row(message_id)
        horizon = now - self.in_memory
        due = []
        for message_id, (job, t, _) in self.in_flight.items():
            if t >= horizon and not everything:
                break
            due.append((message_id, job.recipient.text, t))
        for message_id, recipient, t in due:
            del self.in_flight[message_id]
            self.waiting[message_id] = (message_id, recipient, t, t, "accepted", None)

    # ---- the loop

    async def start(self) -> None:
        """The writer up before the first message (its process's start-up is the MTA's, not
        a pause in the middle of its first second of mail); if it does not start, the
        events wait and the writes try again."""
        try:
            await self.writer.start()
        except Exception as exc:
            log.warning("event store %s: the writer did not start (%s: %s); the events wait",
                        self.writer.path, type(exc).__name__, exc)

    async def run(self, stop: asyncio.Event) -> None:
        counting = asyncio.ensure_future(self._count(stop))
        try:
            while not stop.is_set():
                await self._sleep(FLUSH_EVERY)
                await self.flush()
        finally:
            counting.cancel()
            await asyncio.gather(counting, return_exceptions=True)
            self._retry_at = 0.0
            self._due(self._wall(), everything=True)  # in flight at the end: back to the broker
            await self.flush()  # what the last moments settled
            await self.store.close()
            await self.writer.close()

    async def flush(self) -> None:
        """Write what came in. When the store does not take it, it is kept and tried again
        in RETRY seconds; said once, and once when it works again."""
        now = self._wall()
        self._due(now)
        if now < self._retry_at or not (self.local or self.waiting or self.finished):
            return
        rows, self.local = self.local, []
        waiting, self.waiting = self.waiting, {}
        finished, self.finished = self.finished, []
        try:  # the pending table's changes with the last batch of rows, in its transaction
            chunks = [rows[start:start + BATCH] for start in range(0, len(rows), BATCH)] or [[]]
            for chunk in chunks[:-1]:
                await self.writer.write(chunk, ([], []))
            await self.writer.write(chunks[-1], (finished, list(waiting.values())))
        except Exception as exc:
            if not self.down:
                self.down = True
                log.warning("event store %s: writing failed (%s: %s); the events wait, tried again every %.0fs",
                            self.writer.path, type(exc).__name__, exc, RETRY)
            self.local = (rows + self.local)[-MAX_WAITING:]
            self.waiting = {**waiting, **self.waiting}
            self.finished = (finished + self.finished)[-MAX_WAITING:]
            self._retry_at = now + RETRY
            return
        if self.down:
            self.down = False
            log.warning("event store %s: writing works again", self.writer.path)
        self.stored += len(rows)

    async def _count(self, stop: asyncio.Event) -> None:
        retained = 0.0
        while not stop.is_set():
            now = self._wall()
            try:
                self.stuck = await self.store.count_stuck(self.config.stuck_after, now)
                if now - retained >= RETAIN_EVERY:
                    retained = now
                    dropped = await self.store.retain(self.config.retention, now)
                    if dropped:
                        log.info("event store: dropped the days %s (retention)", ", ".join(dropped))
            except Exception:
                log.exception("event store %s: counting stuck messages failed", self.store.path)
            await self._sleep(COUNT_EVERY)

