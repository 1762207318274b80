"""Settle: turn an outcome into broker writes, and acknowledge only once they are durable.

For each consumed delivery the settler publishes what replaces it (a result; for a deferral
also the retry copy into a delay queue; for bad input the original into `mta.invalid`),
waits for the broker's confirms, and only then acknowledges the delivery. Writes are
batched: everything settled while the previous batch was in flight goes out together, and
acknowledgements go out as one `multiple=True` ack per contiguous run of delivery tags.

A publish that fails (nack, timeout, lost connection) leaves its delivery unacknowledged;
it is requeued, or redelivered when the channel closes. Final outcomes are remembered for a
while by message, so a redelivered copy of a message that was already delivered gets its
result published again instead of being sent twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from datetime import datetime, timezone
from typing import Any

import orjson
from aiormq import spec

from mta import fault
from mta.message import H_ATTEMPTS, H_FIRST, H_ID, H_RESULTS, Job
from mta.topology import EXCHANGE, INVALID, RESULTS, Topology

log = logging.getLogger("mta.settle")

RECENT_FINALS = 200_000  # outcomes remembered against redelivery; a few dozen MB at most


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AckBook:
    """Acknowledgements for one consuming channel, in delivery-tag order."""

    def __init__(self, channel):
        self.channel = channel  # the aiormq channel the deliveries came on
        self._order: deque[int] = deque()
        self._done: set[int] = set()
        self._acked: set[int] = set()
        self.requeue: list[int] = []

    def received(self, tag: int) -> None:
        self._order.append(tag)

    def settled(self, tag: int) -> None:
        self._done.add(tag)

    @property
    def open(self) -> int:
        return len(self._order)

    async def flush(self) -> None:
        channel = self.channel
        if channel.is_closed:
            return  # tags died with the channel; the broker redelivers those messages
        top = None
        order, done, acked = self._order, self._done, self._acked
        while order and (order[0] in done or order[0] in acked):
            tag = order.popleft()
            if tag in done:
                done.discard(tag)
                top = tag
            else:
                acked.discard(tag)
        if top is not None:
            await channel.basic_ack(top, multiple=True, wait=False)
        for tag in done:  # settled out of order: ack alone rather than hold the prefetch window
            await channel.basic_ack(tag, wait=False)
            acked.add(tag)
        done.clear()
        requeue, self.requeue = self.requeue, []
        for tag in requeue:
            await channel.basic_nack(tag, requeue=True, wait=False)
            acked.add(tag)


class Settlement:
    __slots__ = ("book", "tag", "publishes", "final")

    def __init__(self, book: AckBook, tag: int, publishes: list, final: tuple | None = None):
        self.book = book
        self.tag = tag
        self.publishes = publishes  # (exchange key, routing key, body, headers)
        self.final = final


class Settler:
    def __init__(self, channel, topology: Topology, publish_timeout: float):
        self._channel = channel
        self._topology = topology
        self._timeout = publish_timeout
        self._pending: list[Settlement] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.books: set[AckBook] = set()
        self.recent: OrderedDict[tuple, tuple[bytes, str, bool]] = OrderedDict()

    # ---- outcomes

    def add(self, settlement: Settlement) -> None:
        self.books.add(settlement.book)
        self._pending.append(settlement)
        self._idle.clear()
        self._wake.set()

    def result(self, job: Job, status: str, *, bounce: str | None = None) -> bytes:
        doc = job.doc
        out: dict[str, Any] = {k: v for k, v in doc.items() if k != "mime" and k != "mime_b64"}
        out["id"] = job.id
        out["status"] = status
        out["final"] = status != "deferred"
        out["attempts"] = job.attempts
        out["results"] = job.history
        if bounce is not None:
            out["bounce"] = bounce
        return orjson.dumps(out)

    def final(self, job: Job, book: AckBook, tag: int, status: str, bounce: str | None = None) -> None:
        body = self.result(job, status, bounce=bounce)
        key = _recent_key(job)
        # Remembered before the result is out: a copy redelivered meanwhile (the consuming
        # channel died) must not be sent again.
        self._remember(key, body, status, False)
        self.add(Settlement(book, tag, [("results", status, body, None)], final=(key, body, status)))

    def _remember(self, key: tuple, body: bytes, status: str, published: bool) -> None:
        self.recent[key] = (body, status, published)
        if len(self.recent) > RECENT_FINALS:
            self.recent.popitem(last=False)

    def defer(self, job: Job, book: AckBook, tag: int, delay: float) -> None:
        """A failed attempt to retry: the retry copy and a `deferred` result."""
        self.add(Settlement(book, tag, [
            ("delay", (job.lane, max(1, round(delay))), job.body, _carried(job)),
            ("results", "deferred", self.result(job, "deferred"), None),
        ]))

    def hold(self, job: Job, book: AckBook, tag: int, delay: int) -> None:
        """Not tried: the copy comes back after `delay` with what it carried, and no result."""
        self.add(Settlement(book, tag, [("delay", (job.lane, delay), job.body, _carried(job))]))

    def invalid(self, body: bytes, headers: dict, reason: str, book: AckBook, tag: int, lane: str, now: float) -> None:
        doc: dict[str, Any] = {}
        try:
            parsed = orjson.loads(body)
            if isinstance(parsed, dict):
                doc = {k: v for k, v in parsed.items() if k not in ("mime", "mime_b64")}
        except orjson.JSONDecodeError:
            pass
        doc.update(status="invalid", final=True, attempts=0, error=reason,
                   results=[{"time": rfc3339(now), "phase": "intake", "code": None, "enhanced": None,
                             "description": reason, "mx": None, "ip": None, "lane": lane}])
        keep = {k: v for k, v in (headers or {}).items() if not k.startswith("x-mta-")}
        keep["x-mta-error"] = reason
        keep["x-mta-lane"] = lane
        self.add(Settlement(book, tag, [
            ("default", INVALID, body, keep),
            ("results", "invalid", orjson.dumps(doc), None),
        ]))

    def replay_final(self, job: Job, book: AckBook, tag: int) -> bool:
        """Settle a redelivered copy of a message whose final outcome is known: publish its
        result if that never got out, and acknowledge; never send it again."""
        known = self.recent.get(_recent_key(job))
        if known is None:
            return False
        body, status, published = known
        publishes = [] if published else [("results", status, body, None)]
        self.add(Settlement(book, tag, publishes, final=None if published else (_recent_key(job), body, status)))
        return True

    def attach(self, channel) -> None:
        """A new broker session: publish through its channel from now on."""
        self._channel = channel

    def kick(self) -> None:
        self._wake.set()

    # ---- the loop

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if batch:
                await self._write(batch)
            if not self._pending:
                self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def _write(self, batch: list[Settlement]) -> None:
        coros = [self._publish(*p) for s in batch for p in s.publishes]
        outcomes = await asyncio.gather(*coros, return_exceptions=True)
        i = 0
        for s in batch:
            n = len(s.publishes)
            failures = [o for o in outcomes[i:i + n] if isinstance(o, BaseException)]
            i += n
            if s.final is not None and not failures:
                self._remember(*s.final, True)
            if failures:
                log.warning("publish failed (%s); the message stays unacknowledged and will come back", failures[0])
                s.book.requeue.append(s.tag)
            else:
                s.book.settled(s.tag)
        if fault.ARMED: fault.hit("after_result")  # test-only: MTA_FAULT (mta/fault.py)
        for book in list(self.books):
            try:
                await book.flush()
            except Exception as exc:  # a dead channel: its deliveries are redelivered anyway
                log.warning("acknowledging on a closed channel failed (%s); the broker redelivers", exc)
            if book.channel.is_closed:
                self.books.discard(book)

    async def _publish(self, exchange: str, key, body: bytes, headers: dict | None) -> None:
        # Straight to the aiormq channel: aio-pika's Message and Exchange wrappers cost about
        # a fifth of the CPU of a result publish and add nothing here.
        if exchange == "delay":
            lane, seconds = key
            key = await self._topology.ensure_delay(self._channel, lane, seconds)
            exchange = "default"
        properties = spec.Basic.Properties(delivery_mode=2, content_type="application/json", headers=headers)
        confirm = await self._channel.channel.basic_publish(
            body, exchange=EXCHANGE_NAMES[exchange], routing_key=key, properties=properties,
            mandatory=True, timeout=self._timeout)
        if not isinstance(confirm, spec.Basic.Ack):
            raise PublishRefused(f"the broker did not confirm the publish to {EXCHANGE_NAMES[exchange]!r}: {confirm!r}")


class PublishRefused(Exception):
    """The broker answered a publish with something other than an ack."""


EXCHANGE_NAMES = {"results": RESULTS, "default": "", "mta": EXCHANGE}


def _carried(job: Job) -> dict:
    """What a republished copy carries beside the producer's body."""
    return {
        H_ID: job.id,
        H_ATTEMPTS: job.attempts,
        H_FIRST: int(job.first_seen * 1000),  # ms: AMQP floats may be 32-bit
        H_RESULTS: orjson.dumps(job.history).decode(),
    }


def _recent_key(job: Job) -> tuple:
    return (job.id, job.recipient.text, len(job.body))


def attempt_entry(now: float, phase: str, code: int | None, enhanced: str | None, description: str,
                  mx: str | None, ip: str | None, lane: str) -> dict:
    return {"time": rfc3339(now), "phase": phase, "code": code, "enhanced": enhanced,
            "description": description, "mx": mx, "ip": ip, "lane": lane}
