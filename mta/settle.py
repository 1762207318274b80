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

Nothing replaces a delivery whose consuming channel closed: the broker gives that message
to a consumer again, so a retry or held copy published for it would be a second live copy
of one message. Its final outcome is only remembered, and the redelivered copy publishes
the result when it comes (`replay_final`); a job not yet begun is not sent (`abandoned`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from collections import OrderedDict, deque
from datetime import datetime, timezone
from typing import Any

import orjson

from mta import fault
from mta.journal import Journal
from mta.publish import BatchPublisher, Publish
from mta.message import H_ATTEMPTS, H_FIRST, H_ID, H_RESULTS, Job
from mta.topology import EXCHANGE, INVALID, RESULTS, Topology

log = logging.getLogger("mta.settle")

# Outcomes remembered against redelivery, about 200 bytes each. Only deliveries that were
# unacknowledged when a channel died come back (the prefetch windows, 1,100 by default),
# and they come back within seconds; the engine raises this to 20 windows if they are larger.
RECENT_FINALS = 50_000


_second: list = [None, ""]  # the last whole second formatted: one datetime per second, not per result


def rfc3339(t: float) -> str:
    """UTC with milliseconds (truncated, as isoformat does): 2026-11-23T12:00:00.123Z"""
    seconds = math.floor(t)
    micros = round((t - seconds) * 1e6)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, 0
    if _second[0] != seconds:
        _second[0] = seconds
        _second[1] = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{_second[1]}.{micros // 1000:03d}Z"


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

    @property
    def closed(self) -> bool:
        """The channel is gone, and with it every delivery tag of this book."""
        return self.channel.is_closed

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
    def __init__(self, channel, topology: Topology, publish_timeout: float,
                 observe_confirm: Callable[[float], None] | None = None):
        self._observe_confirm = observe_confirm  # seconds from a batch's write to its last confirm
        self._channel = channel
        self._topology = topology
        self._timeout = publish_timeout
        self._pending: list[Settlement] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.books: set[AckBook] = set()
        self.recent: OrderedDict[str, tuple[bytes | None, str, bool]] = OrderedDict()
        self.recent_limit = RECENT_FINALS
        self.journal: Journal | None = None  # the record on disk, for the process after a crash
        # Bodies whose retry or held copy was confirmed as their channel closed (too late to
        # acknowledge them): until the copy can come back, a redelivered original is its double.
        self._replaced: OrderedDict[bytes, float] = OrderedDict()

    # ---- outcomes

    def add(self, settlement: Settlement) -> None:
        if settlement.book.closed:
            return  # redelivered by the broker: what would replace it must not be published
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
        if book.closed:
            # The broker redelivers the message: its copy is settled with this result (here,
            # or unsent if a copy got here first and was settled already).
            if key not in self.recent:
                self._remember(key, body, status, False)
                if self.journal is not None:
                    self.journal.final(key, status, body)
            return
        # Remembered before the result is out: a copy redelivered meanwhile (the consuming
        # channel died, or the process after a crash) must not be sent again.
        self._remember(key, body, status, False)
        if self.journal is not None:
            self.journal.final(key, status, body)
        self.add(Settlement(book, tag, [("results", status, body, None)], final=(key, body, status)))

    def _remember(self, key: str, body: bytes, status: str, published: bool) -> None:
        # Once the result is out only the status matters: a shared tuple instead of the body
        # keeps the record at a couple of hundred bytes per message.
        self.recent[key] = (_PUBLISHED.get(status) or (None, status, True)) if published else (body, status, False)
        if len(self.recent) > self.recent_limit:
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
            if self._replaced and self._superseded(job.body):
                self.add(Settlement(book, tag, []))  # its copy is in a delay queue: acknowledge only
                return True
            return False
        body, status, published = known
        publishes = [] if published else [("results", status, body, None)]
        self.add(Settlement(book, tag, publishes, final=None if published else (_recent_key(job), body, status)))
        return True

    def restore(self, known: dict[str, tuple[bytes | None, str, bool]]) -> None:
        """Outcomes a previous process recorded (mta.journal), oldest first."""
        for key, entry in known.items():
            self.recent[key] = entry
            if len(self.recent) > self.recent_limit:
                self.recent.popitem(last=False)

    def _superseded(self, body: bytes) -> bool:
        until = self._replaced.pop(body, None)
        return until is not None and time.monotonic() < until

    def _replaced_by_copy(self, s: Settlement, written: float) -> None:
        """``s`` was confirmed but its channel closed before the acknowledgement: the broker
        redelivers the original while its copy waits in a delay queue. The copy cannot be
        consumed before its delay is over (counted from before its publish), so until then
        a redelivered body equal to it is the original."""
        for exchange, key, body, _ in s.publishes:
            if exchange == "delay":
                self._replaced[body] = written + key[1]
                if len(self._replaced) > self.recent_limit:
                    self._replaced.popitem(last=False)

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
        # A channel that closed since: its deliveries come back, nothing may replace them.
        batch = [s for s in batch if not s.book.closed]
        publishes: list[Publish] = []
        spans: list[tuple[int, int] | None] = []  # per settlement its publishes; None: not sent
        for s in batch:
            mine = []
            try:
                for exchange, key, body, headers in s.publishes:
                    if exchange == "delay":  # a retry or held copy: its delay queue, declared on first use
                        lane, seconds = key
                        exchange, key = "default", await self._topology.ensure_delay(self._channel, lane, seconds)
                    mine.append(Publish(EXCHANGE_NAMES[exchange], key, body, headers))
            except Exception as exc:  # a delay queue could not be declared
                log.warning("declaring a delay queue failed (%s); the message stays unacknowledged "
                            "and will come back", exc)
                spans.append(None)
                continue
            spans.append((len(publishes), len(publishes) + len(mine)))
            publishes += mine
        # One write and one wait for the whole batch: the broker confirms them together.
        started = time.monotonic()
        try:
            outcomes = await BatchPublisher(self._channel.channel).publish(publishes, self._timeout)
        except Exception as exc:  # the channel is gone: every delivery of the batch comes back
            outcomes = [exc] * len(publishes)
        else:
            if self._observe_confirm is not None and publishes:
                self._observe_confirm(time.monotonic() - started)
        for s, span in zip(batch, spans):
            failure = None
            if span is not None:
                for outcome in outcomes[span[0]:span[1]]:
                    if outcome is not None:
                        failure = outcome
                        break
            if span is None or failure is not None:
                if failure is not None:
                    log.warning("publish failed (%s); the message stays unacknowledged and will come back", failure)
                s.book.requeue.append(s.tag)
                continue
            if s.final is not None:
                self._remember(*s.final, True)
                if self.journal is not None:
                    self.journal.published(s.final[0])
            if s.book.closed:
                self._replaced_by_copy(s, started)
                continue
            s.book.settled(s.tag)
        if fault.ARMED: fault.hit("after_result")  # test-only: MTA_FAULT (mta/fault.py)
        for book in list(self.books):
            try:
                await book.flush()
            except Exception as exc:  # a dead channel: its deliveries are redelivered anyway
                log.warning("acknowledging on a closed channel failed (%s); the broker redelivers", exc)
            if book.channel.is_closed:
                self.books.discard(book)


EXCHANGE_NAMES = {"results": RESULTS, "default": "", "mta": EXCHANGE}


def _carried(job: Job) -> dict:
    """What a republished copy carries beside the producer's body."""
    return {
        H_ID: job.id,
        H_ATTEMPTS: job.attempts,
        H_FIRST: int(job.first_seen * 1000),  # ms: AMQP floats may be 32-bit
        H_RESULTS: orjson.dumps(job.history).decode(),
    }


_PUBLISHED = {status: (None, status, True) for status in ("delivered", "bounced", "expired", "invalid", "suppressed")}


def abandoned(job: Job) -> bool:
    """The consuming channel of the job's delivery closed: the broker gives the message to a
    consumer again (maybe this process, maybe already), so this copy must not be sent."""
    delivery = getattr(job, "delivery", None)  # (book, tag); jobs made outside the engine have none
    return delivery is not None and delivery[0].closed


def _recent_key(job: Job) -> str:
    return f"{job.id}\0{job.recipient.text}\0{len(job.body)}"


def attempt_entry(now: float, phase: str, code: int | None, enhanced: str | None, description: str,
                  mx: str | None, ip: str | None, lane: str) -> dict:
    return {"time": rfc3339(now), "phase": phase, "code": code, "enhanced": enhanced,
            "description": description, "mx": mx, "ip": ip, "lane": lane}
