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
from mta.submission.message import next_id

log = logging.getLogger("mta.submission")

NONE, PENDING, CONFIRMED = 0, 1, 2
KEEP = 3600.0  # seconds a finished submission is remembered against a client's retry
MAX_RECORD = 100_000  # finished submissions remembered at most
CHUNK_OCTETS = 16 * 1024 * 1024  # octets of one submission's messages in flight at once
SHARED = "mta:submitted:"  # + id: a hash of the recipients' indexes the broker confirmed (shared store)


class Entry:
    """One submission's recipients: NONE (not with the broker), PENDING, CONFIRMED; and
    whether the client was told 250 (then the same submission again is a new message)."""

    __slots__ = ("states", "waiting", "at", "accepted")

    def __init__(self, n: int, now: float):
        self.states = [NONE] * n
        self.waiting: set[asyncio.Future] = set()
        self.at = now
        self.accepted = False

    def settled(self, recipient: int, error: BaseException | None) -> None:
        self.states[recipient] = CONFIRMED if error is None else NONE

    def done(self) -> bool:
        return all(s == CONFIRMED for s in self.states)

    def fresh(self) -> bool:
        return not self.accepted and all(s == NONE for s in self.states)


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

    async def submit(self, sid: str, n: int, octets: int,
                     build: Callable[[str, list[int]], list[Publish]]) -> tuple[str, str | None]:
        """Have the broker hold all `n` messages of submission `sid` (each about `octets`);
        `build(id, indexes)` makes those not yet published. (the id used, None when all are
        confirmed, else why not, for a 451)."""
        self.busy += 1
        try:
            sid, entry = await self._entry(sid, n)
            if entry is None:
                return sid, self.unavailable()
            why = await self._submit(sid, entry, octets, build)
            if why is None:
                entry.accepted = True
                self._share(sid, {"accepted": 1})
            return sid, why
        finally:
            self.busy -= 1

    async def _entry(self, sid: str, n: int) -> tuple[str, Entry | None]:
        """The record of this submission, past the times it was accepted already (a message
        sent again on purpose is a new one: `message.next_id`). None when it is new and
        the broker cannot take it now: nothing is recorded for it."""
        base = sid
        for k in range(2, 10_000):
            entry = self.record.get(sid)
            if entry is None:
                entry = Entry(n, self._now())
                await self._recall(sid, entry)
                if entry.fresh() and self.unavailable():
                    return sid, None
                self.record[sid] = entry
                self._forget()
            if not entry.accepted:
                return sid, entry
            sid = next_id(base, k)
        raise RuntimeError("the same submission accepted 10,000 times")

    async def _submit(self, sid: str, entry: Entry, octets: int, build) -> str | None:
        if entry.done():
            self.recognised += 1
            return None
        deadline = self._now() + self.patience
        missing = [i for i, state in enumerate(entry.states) if state == NONE]
        if missing:
            why = self.unavailable() or await self._send(sid, entry, missing, octets, build, deadline)
            if why is not None:
                return why
        waiting = set(entry.waiting)
        if waiting:
            await asyncio.wait(waiting, timeout=max(0.0, deadline - self._now()))
        if entry.done():
            self.published += len(missing)
            return None
        return self._why(entry)

    def _why(self, entry: Entry) -> str:
        if any(state == PENDING for state in entry.states):
            return f"the broker did not confirm within {self.patience:.0f}s"
        return "the broker refused the message or the connection closed"

    async def _send(self, sid: str, entry: Entry, missing: list[int], octets: int, build, deadline: float) -> str | None:
        """Publish in chunks of about CHUNK_OCTETS, each confirmed before the next is made:
        a big message to many recipients never sits in memory once per recipient."""
        per = max(1, CHUNK_OCTETS // max(octets, 1))
        for start in range(0, len(missing), per):
            chunk = missing[start:start + per]
            why = await self._publish(sid, entry, chunk, build, deadline)
            if why is not None:
                return why
            if start + per < len(missing):
                waiting = set(entry.waiting)
                if waiting:
                    await asyncio.wait(waiting, timeout=max(0.0, deadline - self._now()))
                if any(entry.states[i] != CONFIRMED for i in chunk):
                    return self._why(entry)
        return None

    async def _publish(self, sid: str, entry: Entry, missing: list[int], build, deadline: float) -> str | None:
        publisher = self.publisher
        if publisher is None or publisher.channel.is_closed:  # lost between two chunks
            return "the broker is not connected"
        encoded = []
        try:
            for publish in build(sid, missing):
                encoded.append(publisher.encode(publish))
        except Unencodable as exc:
            return f"the message cannot be published: {exc}"
        try:
            async with asyncio.timeout(max(0.0, deadline - self._now())):
                batch = await publisher.write(encoded)
        except TimeoutError:  # never written, never numbered: not with the broker
            return f"the broker did not take the message within {self.patience:.0f}s"
        except BrokerError as exc:
            return f"publishing failed: {exc}"
        del encoded
        for i in missing:
            entry.states[i] = PENDING
        # no await since the batch was numbered: none of its confirms can have come in yet
        batch.observer = lambda index, error: entry.settled(missing[index], error)
        entry.waiting.add(batch.future)
        batch.future.add_done_callback(entry.waiting.discard)
        if self.store is not None:
            batch.future.add_done_callback(lambda _: self._share(sid, {
                str(i): 1 for i, error in zip(missing, batch.outcomes) if error is None}))
        return None

    async def confirmed(self, publishes: list[Publish]) -> list[BaseException | None] | str:
        """Publish and wait for the broker's answers (inbound reports: SPEC §8): per publish
        None (confirmed) or the error; or why nothing was published."""
        why = self.unavailable()
        if why is not None:
            return why
        publisher = self.publisher
        try:
            encoded = [publisher.encode(publish) for publish in publishes]
        except Unencodable as exc:
            return f"cannot be published: {exc}"
        deadline = self._now() + self.patience
        try:
            async with asyncio.timeout(self.patience):
                batch = await publisher.write(encoded)
        except TimeoutError:
            return f"the broker did not take the message within {self.patience:.0f}s"
        except BrokerError as exc:
            return f"publishing failed: {exc}"
        await asyncio.wait([batch.future], timeout=max(0.0, deadline - self._now()))
        if batch.waiting:  # not answered in time, or the channel closed first
            return f"the broker did not confirm within {self.patience:.0f}s"
        return batch.outcomes

    async def _recall(self, sid: str, entry: Entry) -> None:
        """What another process or node knows of this submission (shared store): the
        recipients the broker confirmed, and whether it was accepted."""
        if self.store is None or not self.store.up:
            return
        try:
            known = await self.store.call(self.store.client.hkeys, SHARED + sid)
        except StoreDown:
            return
        for field in known:
            if field == b"accepted":
                entry.accepted = True
            elif int(field) < len(entry.states):
                entry.states[int(field)] = CONFIRMED

    def _share(self, sid: str, fields: dict) -> None:
        if self.store is None or not fields:
            return
        task = asyncio.ensure_future(self._write(SHARED + sid, fields))
        self._writes.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._writes.discard)

    async def _write(self, key: str, fields: dict) -> None:
        client = self.store.client
        try:
            async with client.pipeline(transaction=False) as pipe:
                pipe.hset(key, mapping=fields).expire(key, int(KEEP))
                await self.store.call(pipe.execute)
        except StoreDown:
            pass  # then only this process recognises the retry

    def _forget(self) -> None:
        """Submissions older than KEEP, or beyond MAX_RECORD, oldest first; one still waiting
        for the broker is kept (moved to the end)."""
        horizon = self._now() - KEEP
        record = self.record
        for _ in range(len(record)):
            sid, entry = next(iter(record.items()))
            if entry.at > horizon and len(record) <= MAX_RECORD:
                break
            if entry.waiting:
                record.move_to_end(sid)
                continue
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
            self.connection, self.publisher = connection, BatchPublisher(client.publishing(channel), coalesce=True)
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
