"""The tracker: feeds the event store, inside `mta run` (SPEC §9).

Why inside `mta run` and not a process of its own: nothing more to deploy or watch, and what
only the engine sees (a message accepted, held and why) reaches the store without a trip
through the broker. The results of every process and node come through the broker all the
same: the tracker consumes its own durable queue, `mta.tracking`, bound to `mta.results`,
so a result is stored once even when several processes run, and one that was not stored
yet when a process died is stored by the next. Nothing of this is on the delivery path:
the engine appends a tuple per accepted or held message; the rows are written in batches
(every quarter second, at most 5,000) from a thread, and the results acknowledged (one
ack for the batch) only once written.

It also counts the messages accepted and silent for longer than `tracking.stuck_after`
(`mta_stuck_messages`, every 10 s) and drops the days past `tracking.retention`.
"""

from __future__ import annotations

import asyncio
import logging

import orjson

from mta.broker import client
from mta.broker.errors import BrokerError, BrokerLost
from mta.broker.topology import RESULTS
from mta.tracking import events
from mta.tracking.store import EventStore

log = logging.getLogger("mta.tracking")

QUEUE = "mta.tracking"
# Results waiting for the tracker at most; beyond, the oldest are dropped (their events are
# lost to the store, never the mail): an MTA stopped for good, or tracking turned off, leaves
# the queue bound to mta.results, and an unbounded one would fill the broker's disk and stop
# every publisher. A million 1 KB results is about a gigabyte.
MAX_WAITING = 1_000_000
FLUSH_EVERY = 0.25  # seconds between batch writes
BATCH = 5000  # rows written at most at once
PREFETCH = 10_000  # results taken from the broker before they are stored and acknowledged
COUNT_EVERY = 10.0  # seconds between counts of stuck messages
RETAIN_EVERY = 3600.0  # seconds between drops of old days
RETRY = 5.0  # seconds between tries while the store does not take a batch
MAX_LOCAL = 100_000  # the engine's own events kept while the store is away (the oldest go first)


class InThread:
    """A SQLite event store's calls, made in a thread (each store has its own connection)."""

    def __init__(self, store: EventStore):
        self.store = store
        self.path = store.path

    async def write(self, rows: list[tuple]) -> None:
        await asyncio.to_thread(self.store.write, rows)

    async def count_stuck(self, older: float, now: float) -> int:
        return await asyncio.to_thread(self.store.count_stuck, older, now)

    async def retain(self, keep: float, now: float) -> list[str]:
        return await asyncio.to_thread(self.store.retain, keep, now)

    async def close(self) -> None:
        self.store.close()


def stores(config, path: str) -> tuple:
    """Two connections to the event store (one writes, one counts): PostgreSQL with
    `tracking.store`, else the SQLite file at `path`."""
    if config.store:
        from mta.tracking.shared import SharedEvents

        return SharedEvents(config.store), SharedEvents(config.store)
    return InThread(EventStore(path)), InThread(EventStore(path))


class Tracker:
    def __init__(self, config, path: str, url: str, queue_type: str, clock):
        self.config = config  # mta.config.Tracking
        self.writer, self.store = stores(config, path)
        self.url, self.queue_type = url, queue_type
        self._wall, self._sleep = clock.wall, clock.sleep
        self.local: list[tuple] = []  # rows of what the engine saw itself
        self.results: list[tuple] = []  # rows of consumed results
        self.last = None  # the last consumed result not yet acknowledged
        self.stuck = 0  # messages silent past stuck_after (the gauge)
        self.stored = 0
        self.down = False
        self._retry_at = 0.0

    # ---- what the engine tells it (on the event loop, per message: a tuple appended)

    def accepted(self, job) -> None:
        self.local.append(events.local(job, "accepted", self._wall()))

    def held(self, job, why: str, delay: float) -> None:
        self.local.append(events.local(job, "held", self._wall(), f"not tried: {why}; back in {delay:.0f}s",
                                       {"held": why, "for": delay}))

    # ---- the loop

    async def run(self, stop: asyncio.Event) -> None:
        consuming = asyncio.ensure_future(self._consume(stop))
        try:
            while not stop.is_set():
                await self._sleep(FLUSH_EVERY)
                await self.flush()
        finally:
            consuming.cancel()
            await asyncio.gather(consuming, return_exceptions=True)
            await self.flush()
            await self.store.close()
            await self.writer.close()

    async def flush(self) -> None:
        """Write what came in, acknowledge the results written. When the store does not take
        them, they are kept and tried again in RETRY seconds (the results stay unacknowledged:
        past PREFETCH the broker keeps the rest); said once, and once when it works again."""
        now = self._wall()
        if now < self._retry_at:
            return
        local, self.local = self.local, []
        results, self.results = self.results, []
        last, self.last = self.last, None
        rows = local + results
        if not rows:
            return
        try:
            for start in range(0, len(rows), BATCH):
                await self.writer.write(rows[start:start + BATCH])
        except Exception as exc:
            if not self.down:
                self.down = True
                log.warning("event store %s: writing failed (%s: %s); the events wait, tried again every %.0fs",
                            self.writer.path, type(exc).__name__, exc, RETRY)
            self.local = (local + self.local)[-MAX_LOCAL:]
            self.results = results + self.results
            self.last = self.last or last
            self._retry_at = now + RETRY
            return
        if self.down:
            self.down = False
            log.warning("event store %s: writing works again", self.writer.path)
        self.stored += len(rows)
        if last is not None:
            await _ack(last)

    async def _consume(self, stop: asyncio.Event) -> None:
        backoff = 1.0
        while not stop.is_set():
            try:
                await self._consuming(stop)
                backoff = 1.0
            except BrokerError as exc:
                log.warning("tracking: broker connection: %s; reconnecting in %.0fs", exc, backoff)
            try:
                await asyncio.wait_for(stop.wait(), backoff)
            except asyncio.TimeoutError:
                pass
            backoff = min(backoff * 2, 30.0)

    async def _consuming(self, stop: asyncio.Event) -> None:
        connection = await client.connect(self.url, "mta tracking")
        try:
            channel = await client.channel(connection)
            lost = asyncio.Event()
            for thing in (connection, channel):
                client.on_close(thing, lost.set)
            await client.consume_bound(channel, QUEUE, RESULTS, self.queue_type, PREFETCH, MAX_WAITING,
                                       self._on_result)
            waits = (asyncio.ensure_future(stop.wait()), asyncio.ensure_future(lost.wait()))
            counting = asyncio.ensure_future(self._count(stop))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                counting.cancel()
                for wait in waits:
                    wait.cancel()
            if lost.is_set() and not stop.is_set():
                raise BrokerLost("the connection closed")
        finally:
            await client.close(connection)

    async def _on_result(self, message) -> None:
        try:
            doc = orjson.loads(message.body)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict):
            self.results.append(events.from_result(doc, self._wall()))
        self.last = message  # acknowledged (with all before it) once written

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


async def _ack(message) -> None:
    try:
        await client.ack_up_to(message)
    except BrokerError:  # the channel closed: they come again (and are stored twice, both kept)
        pass
