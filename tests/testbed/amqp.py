"""AMQP helpers for black-box tests (aio-pika), synchronous wrappers around async code.

The MTA contract (SPEC §1/§2): producers publish JSON to the direct exchange ``mta`` with
routing key ``single``/``bulk``; results arrive on the queue ``mta.results``; rejected
payloads land in ``mta.invalid`` with the reason in header ``x-mta-error``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Dict, Iterable, List, Optional, Sequence

import aio_pika
from aiormq.exceptions import ChannelNotFoundEntity

EXCHANGE = "mta"
RESULTS_QUEUE = "mta.results"
INVALID_QUEUE = "mta.invalid"


# ---------------------------------------------------------------------- messages
def make_mime(msg_id: str, recipient: str, sender: str = "sender@sender.test",
              size: int = 1024, subject: Optional[str] = None) -> str:
    """An RFC 5322 message (CRLF) with ``Message-ID: <msg_id@test>``, about ``size`` bytes."""
    head = (f"From: <{sender or 'sender@sender.test'}>\r\n"
            f"To: <{recipient}>\r\n"
            f"Subject: {subject or 'test message ' + msg_id}\r\n"
            f"Date: {formatdate(localtime=False)}\r\n"
            f"Message-ID: <{msg_id}@test>\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n"
            "\r\n")
    body_len = max(size - len(head), 16)
    line = f"{msg_id} " + "0123456789abcdefghijklmnopqrstuvwxyz" * 2
    line = line[:76] + "\r\n"
    reps, rest = divmod(body_len, len(line))
    body = line * reps
    if rest > 2:
        body += "x" * (rest - 2) + "\r\n"
    return head + body


def make_message(id: str, recipient: str, envelope: str = "sender@sender.test",
                 size: int = 1024, **extra: Any) -> bytes:
    """The SPEC §1 JSON body for one message.

    ``extra`` fields are added (or override ``recipient``/``envelope``/``mime``/``id``);
    a field given as ``None`` is removed (``mime=None`` makes a body without ``mime``);
    ``mime_b64=True`` sends the generated MIME base64-encoded instead of as ``mime``.
    """
    doc: Dict[str, Any] = {"id": id, "recipient": recipient, "envelope": envelope,
                           "mime": make_mime(id, recipient, envelope, size)}
    if extra.get("mime_b64") is True:
        extra = dict(extra)
        extra["mime_b64"] = base64.b64encode(doc.pop("mime").encode()).decode("ascii")
    doc.update(extra)
    doc = {k: v for k, v in doc.items() if v is not None}
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


# ---------------------------------------------------------------------- publishing
async def apublish(url: str, lane: str, bodies: Iterable[bytes], *, exchange: str = EXCHANGE,
                   content_type: str = "application/json", headers: Optional[dict] = None,
                   mandatory: bool = True, batch: int = 200, timeout: float = 120.0) -> int:
    """Publish persistent messages with publisher confirms; returns how many."""
    bodies = list(bodies)
    conn = await asyncio.wait_for(aio_pika.connect(url), 30)
    try:
        channel = await conn.channel(publisher_confirms=True, on_return_raises=mandatory)
        ex = await channel.get_exchange(exchange, ensure=True) if exchange else channel.default_exchange

        async def one(body: bytes) -> None:
            msg = aio_pika.Message(body=body, content_type=content_type,
                                   delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                   headers=dict(headers or {}))
            await ex.publish(msg, routing_key=lane, mandatory=mandatory)

        async def all_() -> None:
            for i in range(0, len(bodies), batch):
                await asyncio.gather(*(one(b) for b in bodies[i:i + batch]))

        await asyncio.wait_for(all_(), timeout)
    finally:
        await conn.close()
    return len(bodies)


def publish(url: str, lane: str, bodies: Iterable[bytes], **kw: Any) -> int:
    """Publish ``bodies`` to exchange ``mta`` with routing key ``lane`` (single/bulk)."""
    return asyncio.run(apublish(url, lane, bodies, **kw))


# ---------------------------------------------------------------------- queues
async def aqueue_info(url: str, queue: str) -> Optional[Dict[str, int]]:
    """{'messages': ready count, 'consumers': n} by passive declare; None when missing."""
    conn = await asyncio.wait_for(aio_pika.connect(url), 30)
    try:
        channel = await conn.channel()
        try:
            q = await channel.declare_queue(queue, passive=True)
        except ChannelNotFoundEntity:
            return None
        res = q.declaration_result
        return {"messages": res.message_count, "consumers": res.consumer_count}
    finally:
        await conn.close()


def queue_info(url: str, queue: str) -> Optional[Dict[str, int]]:
    return asyncio.run(aqueue_info(url, queue))


async def _wait_queue(channel_factory, queue: str, deadline: float):
    while True:
        channel = await channel_factory()
        try:
            return await channel.declare_queue(queue, passive=True)
        except ChannelNotFoundEntity:
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.2)


@dataclass
class Drained:
    body: bytes
    headers: Dict[str, Any]
    routing_key: Optional[str]
    content_type: Optional[str]
    delivery_mode: Optional[int]


async def adrain_queue(url: str, queue: str, *, expect: Optional[int] = None,
                       timeout: float = 10.0, idle: float = 1.0, ack: bool = True) -> List[Drained]:
    """Take messages from ``queue`` until ``expect`` were read (or, without ``expect``, the
    queue stayed empty for ``idle`` s) or ``timeout`` elapsed.  ``ack=False`` leaves them."""
    out: List[Drained] = []
    deadline = time.monotonic() + timeout
    conn = await asyncio.wait_for(aio_pika.connect(url), 30)
    try:
        q = await _wait_queue(conn.channel, queue, deadline)
        if q is None:
            return out
        last = time.monotonic()
        while time.monotonic() < deadline:
            if expect is not None and len(out) >= expect:
                break
            msg = await q.get(no_ack=False, fail=False)
            if msg is None:
                if expect is None and time.monotonic() - last >= idle:
                    break
                await asyncio.sleep(0.05)
                continue
            last = time.monotonic()
            out.append(Drained(bytes(msg.body), dict(msg.headers or {}), msg.routing_key,
                               msg.content_type, int(msg.delivery_mode or 0) or None))
            if ack:
                await msg.ack()
        if not ack:
            await conn.close()      # unacked gets requeued
    finally:
        if not conn.is_closed:
            await conn.close()
    return out


def drain_queue(url: str, queue: str, **kw: Any) -> List[Drained]:
    return asyncio.run(adrain_queue(url, queue, **kw))


# ---------------------------------------------------------------------- results
class ResultCollector:
    """Consumes ``mta.results`` and keeps everything it saw across calls.

    ``by_id``: {id: [result dict, ...]} in arrival order; ``raw``: [(routing key, doc)];
    ``undecodable``: bodies that were not JSON objects.
    """

    def __init__(self, url: str, queue: str = RESULTS_QUEUE):
        self.url = url
        self.queue = queue
        self.by_id: Dict[str, List[dict]] = collections.defaultdict(list)
        self.raw: List[tuple] = []
        self.undecodable: List[bytes] = []
        self._seen: set = set()

    def _add(self, routing_key: str, body: bytes, redelivered: bool = False) -> None:
        # A result this collector already took but whose ack had not reached the broker
        # when an earlier call closed its channel comes back flagged as redelivered: it is
        # the same broker message, not a second result from the MTA (whose own republished
        # results are new messages, never flagged).
        digest = hash(body)
        if redelivered and digest in self._seen:
            return
        self._seen.add(digest)
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            self.undecodable.append(body)
            return
        self.raw.append((routing_key, doc))
        self.by_id[str(doc.get("id"))].append(doc)

    def finals(self, msg_id: str) -> List[dict]:
        return [r for r in self.by_id.get(msg_id, []) if r.get("final") is True]

    def missing_final(self, ids: Iterable[str]) -> set:
        return {i for i in ids if not self.finals(i)}

    def count(self, status: Optional[str] = None) -> int:
        """How many results (of ``status``) were seen, whatever their id."""
        return sum(1 for _, d in self.raw if status is None or d.get("status") == status)

    async def acollect(self, want_final_ids: Iterable[str], timeout: float,
                       settle: float = 0.5, until=None) -> Dict[str, List[dict]]:
        """Consume until every wanted id has a final result and ``until(self)`` (when
        given) is true, then ``settle`` s more; or until ``timeout``."""
        want = set(want_final_ids)
        deadline = time.monotonic() + timeout
        done_at: Optional[float] = None
        conn = await asyncio.wait_for(aio_pika.connect(self.url), 30)
        try:
            q = await _wait_queue(conn.channel, self.queue, deadline)
            if q is None:
                return self.by_id
            await q.channel.set_qos(prefetch_count=1000)
            event = asyncio.Event()

            async def on_message(msg) -> None:
                self._add(msg.routing_key, bytes(msg.body), msg.redelivered)
                await msg.ack()
                event.set()

            tag = await q.consume(on_message, no_ack=False)
            while True:
                now = time.monotonic()
                if (done_at is None and not self.missing_final(want)
                        and (until is None or until(self))):
                    done_at = now
                if done_at is not None and now - done_at >= settle:
                    break
                if now >= deadline:
                    break
                event.clear()
                wait = min(deadline - now, 0.2)
                try:
                    await asyncio.wait_for(event.wait(), wait)
                except asyncio.TimeoutError:
                    pass
            await q.cancel(tag)
        finally:
            await conn.close()
        return self.by_id

    def collect(self, want_final_ids: Iterable[str] = (), timeout: float = 30.0,
                settle: float = 0.5, until=None) -> Dict[str, List[dict]]:
        return asyncio.run(self.acollect(want_final_ids, timeout, settle, until))


def collect_results(url: str, want_final_ids: Iterable[str], timeout: float,
                    settle: float = 0.5) -> Dict[str, List[dict]]:
    """Consume ``mta.results`` until every wanted id has a result with ``final: true`` (then
    ``settle`` s more, to catch duplicates) or ``timeout`` elapsed.  Returns
    {id: [result dicts in arrival order]} for every id seen (wanted or not)."""
    return dict(ResultCollector(url).collect(want_final_ids, timeout, settle))


def statuses(results: Dict[str, List[dict]], msg_id: str) -> List[str]:
    return [r.get("status") for r in results.get(msg_id, [])]


def final_results(results: Dict[str, List[dict]], msg_id: str) -> List[dict]:
    return [r for r in results.get(msg_id, []) if r.get("final") is True]
