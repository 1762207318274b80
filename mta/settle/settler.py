"""Settle: turn an outcome into broker writes, and acknowledge only once they are durable.

For each consumed delivery the settler publishes what replaces it (a result; for a deferral
also the retry copy into a delay queue; for bad input the original into `mta.invalid`),
waits for the broker's confirms, and only then acknowledges the delivery. Writes are
batched: everything settled while the previous batch was in flight goes out together, and
acknowledgements go out as one `multiple=True` ack per contiguous run of delivery tags.

A publish that fails (nack, timeout, lost connection: mta.broker.errors) leaves its delivery
unacknowledged; it is requeued, or redelivered when the channel closes. Anything else that
goes wrong is a bug, and is not caught here: it ends `run`, the engine's supervision logs
and counts it and ends the broker session (every unacknowledged delivery comes back), and
the next session's `run` settles what comes after. What a batch had settled before the bug
is acknowledged first, so a confirmed retry copy never lives beside its redelivered original. Final outcomes are remembered for a
while by message, so a redelivered copy of a message that was already delivered gets its
result published again instead of being sent twice.

A publish AMQP cannot carry (a producer's header of a type field tables do not have, a
number beyond 64 bits, a content header larger than the broker's frame) is found when it
is encoded, before anything of its settlement is written: an invalid message's copy then
goes out without the headers that cannot be written; a retry or held copy is not sent, the
original goes to `mta.invalid`, gets an `invalid` result instead and is counted as
invalid. Each delivery still ends in one place, and nothing loops.
(What a result and a retry copy carry: mta.settle.results; the acknowledgements:
mta.settle.acks.)

Nothing replaces a delivery whose consuming channel closed: the broker gives that message
to a consumer again, so a retry or held copy published for it would be a second live copy
of one message. Its final outcome is only remembered, and the redelivered copy publishes
the result when it comes (`replay_final`); a job not yet begun is not sent (`abandoned`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from collections import OrderedDict

from mta import fault
from mta.settle.acks import AckBook, Settlement
from mta.settle.journal import Journal
from mta.settle.results import (carried, cut_id, cut_text, dumps, invalid_doc, recent_key, result_doc, said,
                                writable)
from mta.broker.client import publishing
from mta.broker.errors import BrokerLost
from mta.broker.publish import BatchPublisher, Publish, Unencodable
from mta.intake.message import Job
from mta.clock import SYSTEM, Clock
from mta.broker.topology import EXCHANGE, INVALID, RESULTS, Topology

log = logging.getLogger("mta.settle")

# Outcomes remembered against redelivery, about 200 bytes each. Only deliveries that were
# unacknowledged when a channel died come back (the prefetch windows, 1,100 by default),
# and they come back within seconds; the engine raises this to 20 windows if they are larger.
RECENT_FINALS = 50_000


class Settler:
    def __init__(self, channel, topology: Topology, publish_timeout: float,
                 observe_confirm: Callable[[float], None] | None = None, counts: dict[str, int] | None = None,
                 clock: Clock = SYSTEM):
        self._clock = clock  # monotonic time: confirm latencies, how long a copy supersedes
        self._observe_confirm = observe_confirm  # seconds from a batch's write to its last confirm
        # The engine's outcome counts: a retry or held copy sent to mta.invalid instead is
        # counted there as invalid (what `mta_messages_invalid_total` and `mta status` show).
        self.counts = counts if counts is not None else {}
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
        self._publisher: BatchPublisher | None = None
        self.journal: Journal | None = None  # the record on disk, for the process after a crash
        # Several nodes (mta.cluster.record): the outcomes of a batch reach the shared store
        # before its deliveries are acknowledged, so another node that gets one again knows it.
        self.before_ack: Callable[[], Awaitable[None]] | None = None
        # Bodies whose retry or held copy was confirmed as their channel closed (too late to
        # acknowledge them): until the copy can come back, a redelivered original is its double.
        self._replaced: OrderedDict[bytes, float] = OrderedDict()

    # ---- outcomes

    def add(self, settlement: Settlement) -> None:
        if settlement.book.closed_now():
            return  # redelivered by the broker: what would replace it must not be published
        self._add(settlement)

    def _add(self, settlement: Settlement) -> None:
        """`add` for a settlement whose channel was just seen open."""
        self.books.add(settlement.book)
        self._pending.append(settlement)
        self._idle.clear()
        self._wake.set()


    def result(self, job: Job, status: str, *, bounce: str | None = None) -> bytes:
        return dumps(result_doc(job, status, bounce))

    def final(self, job: Job, book: AckBook, tag: int, status: str, bounce: str | None = None) -> bytes:
        """Settle a final outcome; the result as published (the event store's tracker reads it)."""
        body = dumps(result_doc(job, status, bounce))
        key = f"{job.id}\0{job.recipient.text}\0{len(job.body)}"  # recent_key, inline
        if book.closed_now():
            # The broker redelivers the message: its copy is settled with this result (here,
            # or unsent if a copy got here first and was settled already).
            if key not in self.recent:
                self._remember(key, body, status, False)
                if self.journal is not None:
                    self.journal.final(key, status, body)
            return body
        # Remembered before the result is out: a copy redelivered meanwhile (the consuming
        # channel died, or the process after a crash) must not be sent again.
        self._remember(key, body, status, False)
        mark = None if self.journal is None else self.journal.final(key, status, body)
        self._add(Settlement(book, tag, [("results", status, body, None)], final=(key, body, status, mark)))
        return body

    def _remember(self, key: str, body: bytes, status: str, published: bool) -> None:
        # Once the result is out only the status matters: a shared tuple instead of the body
        # keeps the record at a couple of hundred bytes per message.
        self.recent[key] = (_PUBLISHED.get(status) or (None, status, True)) if published else (body, status, False)
        if len(self.recent) > self.recent_limit:
            self.recent.popitem(last=False)

    def defer(self, job: Job, book: AckBook, tag: int, delay: float) -> bytes:
        """A failed attempt to retry: the retry copy and a `deferred` result (returned)."""
        result = self.result(job, "deferred")
        self.add(Settlement(book, tag, [
            ("delay", (job.lane, delay), job.body, carried(job)),  # topology rounds it up to a rung
            ("results", "deferred", result, None),
        ], job=job))
        return result

    def hold(self, job: Job, book: AckBook, tag: int, delay: int) -> None:
        """Not tried: the copy comes back after `delay` with what it carried, and no result."""
        self.add(Settlement(book, tag, [("delay", (job.lane, delay), job.body, carried(job))], job=job))

    def invalid(self, body: bytes, headers: dict, reason: str, book: AckBook, tag: int, lane: str, now: float,
                echo: bool = True) -> None:
        """`echo=False`: the body is not read for fields to echo (refused for its size, unread)."""
        keep = {k: v for k, v in (headers or {}).items() if not k.startswith("x-mta-")}
        keep["x-mta-error"] = reason
        keep["x-mta-lane"] = lane
        self.add(Settlement(book, tag, [
            ("default", INVALID, body, keep),
            ("results", "invalid", dumps(invalid_doc(body, reason, lane, now, echo)), None),
        ]))

    def replay_final(self, job: Job, book: AckBook, tag: int) -> bool:
        """Settle a redelivered copy of a message whose final outcome is known: publish its
        result if that never got out, and acknowledge; never send it again."""
        known = self.recent.get(recent_key(job))
        if known is None:
            if self._replaced and self._superseded(job.body):
                self.add(Settlement(book, tag, []))  # its copy is in a delay queue: acknowledge only
                return True
            return False
        body, status, published = known
        publishes = [] if published else [("results", status, body, None)]
        self.add(Settlement(book, tag, publishes, final=None if published else (recent_key(job), body, status, None)))
        return True

    def restore(self, known: dict[str, tuple[bytes | None, str, bool]]) -> None:
        """Outcomes a previous process recorded (mta.journal), oldest first."""
        for key, entry in known.items():
            self.recent[key] = entry
            if len(self.recent) > self.recent_limit:
                self.recent.popitem(last=False)

    def _superseded(self, body: bytes) -> bool:
        until = self._replaced.pop(body, None)
        return until is not None and self._clock.now() < until

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
        """A new broker session: publish through its channel from now on. What was pending
        for the channels of the old session is not written: the broker redelivers those."""
        self._channel = channel
        self._pending = [s for s in self._pending if not s.book.closed]
        if self._pending:  # a run that ended midway left them: the next run starts with them
            self._wake.set()
        else:
            self._idle.set()

    def kick(self) -> None:
        self._wake.set()

    # ---- the loop

    async def run(self) -> None:
        """Settle until cancelled. A bug raises out of here (see the module's comment): the
        session ends and its deliveries come back; a message that fails every time ends in
        mta.quarantine by the delivery limit."""
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
        batch = _on_open_channels(batch)
        channel = publishing(self._channel)  # BrokerLost once closed: the session is over
        publisher = self._publisher
        if publisher is None or publisher.channel is not channel:
            publisher = self._publisher = BatchPublisher(channel)
        encoded, spans = await self._encode(batch, publisher)
        # One write and one wait for the whole batch: the broker confirms them together.
        started = self._clock.now()
        try:
            outcomes = await publisher.send(encoded, self._timeout)
        except BrokerLost as exc:  # the channel is gone: every delivery of the batch comes back
            outcomes = [exc] * len(encoded)
        else:
            if self._observe_confirm is not None and encoded:
                self._observe_confirm(self._clock.now() - started)
        # Whether a channel closed is asked once per run of one book's settlements: nothing
        # in this loop awaits, so no channel closes between the question and the answer's use.
        book, gone = None, False
        try:
            for s, span in zip(batch, spans):
                if s.book is not book:
                    book, gone = s.book, s.book.closed
                self._confirmed(s, span, outcomes, started, gone)
            if self.before_ack is not None:
                await self.before_ack()  # bounded by the store's timeout; down: acknowledged anyway
            if fault.ARMED: fault.hit("after_result")  # test-only: MTA_FAULT (mta/fault.py)
        finally:  # also after a bug midway: what was settled and confirmed is acknowledged
            await self._flush()

    async def _encode(self, batch: list[Settlement],
                      publisher: BatchPublisher) -> tuple[list[tuple[str, bytes]], list[tuple[int, int] | None]]:
        """The frames of a batch, and per settlement the span of them that is its publishes."""
        encode = publisher.encode
        encoded: list[tuple[str, bytes]] = []
        spans: list[tuple[int, int] | None] = []  # per settlement its publishes; None: not sent
        for s in batch:
            # All of a settlement is encoded before any of it is sent: one that cannot be
            # is replaced as a whole, and nothing of it is out twice.
            try:
                mine = []
                for exchange, key, body, headers in s.publishes:
                    if exchange == "delay":  # a retry or held copy: its delay queue, declared on first use
                        lane, seconds = key
                        exchange, key = "default", await self._topology.ensure_delay(self._channel, lane, seconds)
                    mine.append(encode(Publish(EXCHANGE_NAMES[exchange], key, body, headers)))
            except Unencodable as exc:
                mine = await self._unencodable(publisher, s, exc)
            except BrokerLost as exc:  # a delay queue could not be declared: the channel is gone
                log.warning("preparing the publishes of message %s failed (%s); it stays unacknowledged "
                            "and will come back", _message_of(s), said(exc))
                mine = None
            if mine is None:
                spans.append(None)
                continue
            spans.append((len(encoded), len(encoded) + len(mine)))
            encoded += mine
        return encoded, spans

    async def _flush(self) -> None:
        for book in list(self.books):
            try:
                await book.flush()
            except BrokerLost as exc:  # a dead channel: its deliveries are redelivered anyway
                log.warning("acknowledging on a closed channel failed (%s); the broker redelivers", exc)
            if book.channel.is_closed:
                self.books.discard(book)

    def _confirmed(self, s: Settlement, span: tuple[int, int] | None, outcomes: list, started: float,
                   gone: bool) -> None:
        """A settlement's broker answers: acknowledge it when all were confirmed, else give it
        back. ``gone``: its channel closed (``s.book.closed``, asked by the caller)."""
        failure = None
        if span is not None:
            for outcome in outcomes[span[0]:span[1]]:
                if outcome is not None:
                    failure = outcome
                    break
        if span is None or failure is not None:
            if failure is not None:
                log.warning("publish failed (%s); the message stays unacknowledged and will come back", said(failure))
            s.book.requeue.append(s.tag)
            return
        if s.final is not None:
            key, body, status, mark = s.final
            self._remember(key, body, status, True)
            if self.journal is not None:
                self.journal.published(key, mark)
        if gone:
            self._replaced_by_copy(s, started)
            return
        s.book.settled(s.tag)

    async def _publishes(self, publishes: list) -> list[Publish]:
        out = []
        for exchange, key, body, headers in publishes:
            if exchange == "delay":  # a retry or held copy: its delay queue, declared on first use
                lane, seconds = key
                exchange, key = "default", await self._topology.ensure_delay(self._channel, lane, seconds)
            out.append(Publish(EXCHANGE_NAMES[exchange], key, body, headers))
        return out

    async def _unencodable(self, publisher: BatchPublisher, s: Settlement,
                           error: Unencodable) -> list[tuple[str, bytes]] | None:
        """What to publish instead of a settlement AMQP cannot carry; None: nothing (the
        delivery stays unacknowledged)."""
        first = s.publishes[0]
        if first[0] == "default" and first[1] == INVALID:  # a producer's headers on an invalid copy
            log.warning("an invalid message's copy could not carry all its headers (%s); it goes to %s "
                        "without them", said(error), INVALID)
            headers = writable(first[3])
            try:
                publisher.encode(Publish("", INVALID, first[2], headers))
            except Unencodable:  # each one fits, all together they do not
                headers = {"x-mta-error": f"{first[3].get('x-mta-error')}; the producer's headers were "
                                          f"too large to keep", "x-mta-lane": first[3].get("x-mta-lane")}
            s.publishes = [(first[0], first[1], first[2], headers), *s.publishes[1:]]
        elif s.job is not None:  # a retry or held copy
            job = s.job
            reason = cut_text(f"the copy for the next attempt could not be republished: {error}", REASON_MAX)
            log.warning("message %s: %s; it goes to %s instead", cut_id(job.id), said(reason), INVALID)
            self.counts["invalid"] = self.counts.get("invalid", 0) + 1
            doc = result_doc(job, "invalid")
            doc["error"] = reason
            body = dumps(doc)
            key = recent_key(job)
            self._remember(key, body, "invalid", False)
            s.final, s.job = (key, body, "invalid", None), None
            s.publishes = [("default", INVALID, job.body, {"x-mta-error": reason, "x-mta-lane": job.lane}),
                           ("results", "invalid", body, None)]
        else:
            s.publishes = None
        try:
            return [publisher.encode(p) for p in await self._publishes(s.publishes)] if s.publishes else None
        except Unencodable as exc:
            log.error("a publish could not be encoded (%s); the message stays unacknowledged", said(exc))
            return None
        except BrokerLost as exc:  # a delay queue could not be declared: the channel is gone
            log.warning("publishing failed (%s); the message stays unacknowledged and will come back", said(exc))
            return None


EXCHANGE_NAMES = {"results": RESULTS, "default": "", "mta": EXCHANGE}
REASON_MAX = 512  # octets of an unencodable copy's reason in x-mta-error and the result


def _on_open_channels(batch: list[Settlement]) -> list[Settlement]:
    """The settlements of ``batch`` whose channel is open, asking once per run of one book's
    (a batch is mostly one lane's) rather than once per settlement."""
    kept = []
    book, gone = None, False
    for s in batch:
        if s.book is not book:
            book, gone = s.book, s.book.closed
        if not gone:
            kept.append(s)
    return kept


def _message_of(s: Settlement) -> str:
    """The message id of a settlement, for a log line."""
    if s.job is not None:
        return cut_id(s.job.id)
    if s.final is not None:
        return cut_id(s.final[0].partition("\0")[0])
    return f"(delivery {s.tag})"


_PUBLISHED = {status: (None, status, True) for status in ("delivered", "bounced", "expired", "invalid", "suppressed")}
