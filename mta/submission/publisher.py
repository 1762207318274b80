"""Accepted means durable (SPEC §7): a submission's messages are published with confirms on
the listeners' own broker connection, and the client hears 250 only when every one is
confirmed; 451 4.3.0 when the broker is away, blocked by an alarm, refuses, or does not
confirm within `broker.publish_timeout`.

What was written but not confirmed when the client was told 451 is not forgotten: the
record keeps, per submission id (derived from the submission, mta.submission.message),
which recipients' messages are confirmed, which are still waiting for the broker and which
never got there. When the client sends the same message again, only the recipients that
never got there are published; those still waiting are waited for; if all are in, the
answer is 250 at once. A broker blocked by a memory alarm confirms a message when the
alarm clears, long after the client was told 451: its retry is then answered from the
record, and nothing is delivered twice.

With a shared store (`cluster.store`), what the broker confirmed is written there too, so a
retry that reaches another process or node (SO_REUSEPORT, a load balancer) is answered
the same. A retry that comes before the late confirm does is published again there
(at least once, never lost).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable

from mta.broker import client
from mta.broker.errors import BrokerError, BrokerLost, Unencodable
from mta.broker.publish import BatchPublisher, Publish
from mta.broker.topology import Topology
from mta.cluster.store import StoreDown

log = logging.getLogger("mta.submission")

NONE, PENDING, CONFIRMED = 0, 1, 2
KEEP = 3600.0  # seconds a finished submission is remembered against a client's retry
MAX_RECORD = 100_000  # finished submissions remembered at most
SHARED = "mta:submitted:"  # + id: a hash of the recipients' indexes the broker confirmed (shared store)


class Entry:
    """One submission's recipients: NONE (not with the broker), PENDING, CONFIRMED."""

    __slots__ = ("states", "waiting", "at")

    def __init__(self, n: int, now: float):
        self.states = [NONE] * n
        self.waiting: set[asyncio.Future] = set()
        self.at = now

    def settled(self, recipient: int, error: BaseException | None) -> None:
        self.states[recipient] = CONFIRMED if error is None else NONE

    def done(self) -> bool:
        return all(s == CONFIRMED for s in self.states)


class Submitter:
    def __init__(self, url: str, topology: Topology, patience: float, now: Callable[[], float], store=None):
        self.url = url
        self.store = store  # mta.cluster.store.Store, or None: this process alone
        self._writes: set[asyncio.Task] = set()
        self.topology = topology
        self.patience = patience
        self._now = now
        self.connection = None
        self.publisher: BatchPublisher | None = None
        self.record: OrderedDict[str, Entry] = OrderedDict()
        self.published = 0  # messages confirmed
        self.recognised = 0  # submissions answered from the record (a client's retry)
        self.busy = 0  # submissions waiting for the broker now

    def unavailable(self) -> str | None:
        """Why nothing can be published now (None: it can)."""
        if self.publisher is None or self.publisher.channel.is_closed:
            return "the broker is not connected"
        if client.blocked(self.connection):
            return "the broker is blocking publishers (memory or disk alarm)"
        return None

    async def submit(self, sid: str, n: int, build: Callable[[list[int]], list[Publish]]) -> str | None:
        """Have the broker hold all `n` messages of submission `sid`; `build(indexes)` makes
        those not yet published. None when all are confirmed, else why not (for a 451)."""
        self.busy += 1
        try:
            return await self._submit(sid, n, build)
        finally:
            self.busy -= 1

    async def _submit(self, sid: str, n: int, build: Callable[[list[int]], list[Publish]]) -> str | None:
        entry = self.record.get(sid)
        if entry is None:
            entry = self.record[sid] = Entry(n, self._now())
            self._forget()
            await self._recall(sid, entry)
        if entry.done():
            self.recognised += 1
            return None
        missing = [i for i, state in enumerate(entry.states) if state == NONE]
        why = None
        if missing:
            why = self.unavailable() or await self._publish(sid, entry, missing, build)
        if why is not None:
            return why
        waiting = set(entry.waiting)
        if waiting:
            await asyncio.wait(waiting, timeout=self.patience)
        if entry.done():
            self.published += len(missing)
            return None
        if any(state == PENDING for state in entry.states):
            return f"the broker did not confirm within {self.patience:.0f}s"
        return "the broker refused the message or the connection closed"

    async def _publish(self, sid: str, entry: Entry, missing: list[int], build) -> str | None:
        encoded = []
        try:
            for publish in build(missing):
                encoded.append(self.publisher.encode(publish))
        except Unencodable as exc:
            return f"the message cannot be published: {exc}"
        try:
            async with asyncio.timeout(self.patience):
                batch = await self.publisher.write(encoded)
        except TimeoutError:  # never written, never numbered: not with the broker
            return f"the broker did not take the message within {self.patience:.0f}s"
        except BrokerError as exc:
            return f"publishing failed: {exc}"
        for i in missing:
            entry.states[i] = PENDING
        # no await since the batch was numbered: none of its confirms can have come in yet
        batch.observer = lambda index, error: entry.settled(missing[index], error)
        entry.waiting.add(batch.future)
        batch.future.add_done_callback(entry.waiting.discard)
        if self.store is not None:
            batch.future.add_done_callback(lambda _: self._share(sid, missing, batch.outcomes))
        return None

    async def _recall(self, sid: str, entry: Entry) -> None:
        """The recipients another process or node already had confirmed (shared store)."""
        if self.store is None or not self.store.up:
            return
        try:
            confirmed = await self.store.call(self.store.client.hkeys, SHARED + sid)
        except StoreDown:
            return
        for index in confirmed:
            if int(index) < len(entry.states):
                entry.states[int(index)] = CONFIRMED

    def _share(self, sid: str, indexes: list[int], outcomes: list) -> None:
        confirmed = {str(i): 1 for i, error in zip(indexes, outcomes) if error is None}
        if confirmed:
            task = asyncio.ensure_future(self._write(SHARED + sid, confirmed))
            self._writes.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(self._writes.discard)

    async def _write(self, key: str, confirmed: dict) -> None:
        client = self.store.client
        try:
            async with client.pipeline(transaction=False) as pipe:
                pipe.hset(key, mapping=confirmed).expire(key, int(KEEP))
                await self.store.call(pipe.execute)
        except StoreDown:
            pass  # then only this process recognises the retry

    def _forget(self) -> None:
        """Finished submissions older than KEEP, or beyond MAX_RECORD, oldest first."""
        horizon = self._now() - KEEP
        record = self.record
        while record:
            sid, entry = next(iter(record.items()))
            if entry.waiting or (entry.at > horizon and len(record) <= MAX_RECORD):
                break
            del record[sid]

    async def run(self, stop: asyncio.Event) -> None:
        """Keep a publishing connection until `stop`; reconnect with backoff."""
        backoff = 1.0
        while not stop.is_set():
            try:
                await self._connected(stop)
                backoff = 1.0
            except BrokerLost as exc:
                log.warning("submission: broker connection: %s; reconnecting in %.0fs", exc, backoff)
            if stop.is_set():
                break
            try:
                await asyncio.wait_for(stop.wait(), backoff)
            except asyncio.TimeoutError:
                pass
            backoff = min(backoff * 2, 30.0)

    async def _connected(self, stop: asyncio.Event) -> None:
        connection = await client.connect(self.url, "mta submission")
        try:
            channel = await client.channel(connection, confirms=True)
            await self.topology.declare(channel)
            lost = asyncio.Event()
            for thing in (connection, channel):
                client.on_close(thing, lost.set)
            self.connection, self.publisher = connection, BatchPublisher(client.publishing(channel))
            log.info("submission: publishing at %s", client.redact(self.url))
            waits = (asyncio.ensure_future(stop.wait()), asyncio.ensure_future(lost.wait()))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
            if lost.is_set() and not stop.is_set():
                raise BrokerLost("the connection closed")
        finally:
            self.publisher = None
            await client.close(connection)
