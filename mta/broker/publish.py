"""Confirmed publishes in batches, below aiormq's `basic_publish`.

aiormq's `basic_publish` costs a lock round, a write-queue item, a drain future and a
confirmation future per message, and pamqp's generic marshalling validates every field:
about a quarter of the engine's CPU at 1 KB. Here a batch of publishes is marshalled by
hand into one write, each publish gets a slot in the channel's confirmation table (so
aiormq's own reader settles it on Ack, Nack or Return), and the caller waits once for the
whole batch.

Same guarantees as `basic_publish` with confirms, `mandatory` and `on_return_raises`: a
publish counts as done only on the broker's Ack; a Nack or a Return (no queue took it:
`PublishRefused`), a timeout (`PublishTimeout`) or a closed channel (`BrokerLost`) is
reported per publish as an exception (mta.broker.errors).

The broker numbers the publishes of a channel in the order they arrive, and its Acks and
Nacks name those numbers; the channel's `delivery_tag` counter must stay equal to the
broker's count, or every later confirm settles the wrong publish. So a publish is encoded
completely before it is counted (one that cannot be encoded fails alone, `Unencodable`,
and takes no number), and numbers are taken only once the batch is in the write queue,
with no await in between: a write cancelled while waiting for room takes none.

With `coalesce`, a write whose predecessor's frame still waits in the write queue joins
that frame instead of queueing its own: the publishes of many callers finishing in one
loop turn (the SMTP listeners: one small submission each) leave in one `send()` instead of
one each, in the order their numbers were taken. A frame is only joined while it is the
queue's last (nothing queued behind it), and aiormq's writer takes its payload in the same
step as it takes it from the queue.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Sequence

from aiormq.abc import ChannelFrame
from aiormq.exceptions import DeliveryError
from pamqp import commands as spec
from pamqp.encode import field_table

from mta.broker.errors import BrokerLost, PublishTimeout, Unencodable, mapped, translate

_FRAME_END = b"\xce"
_HEAD = struct.Struct(">BHI")  # frame type, channel, payload size
_PUBLISH = struct.Struct(">HHH")  # class 60, method 40, reserved
_CONTENT = struct.Struct(">HHQH")  # class 60, weight 0, body size, property flags

# Basic properties we set, by flag bit (AMQP 0-9-1 §4.2.6.1: bit 15 is the first property)
_CONTENT_TYPE = 1 << 15
_HEADERS = 1 << 13
_DELIVERY_MODE = 1 << 12
_MESSAGE_ID = 1 << 7

_JSON = b"\x10application/json"  # shortstr: length octet, then the bytes
COALESCE_OCTETS = 256 * 1024  # a joined frame grows no further


class Publish:
    """One message to publish: where, what, with which headers (None: none)."""

    __slots__ = ("exchange", "routing_key", "body", "headers")

    def __init__(self, exchange: str, routing_key: str, body: bytes, headers: dict | None = None):
        self.exchange = exchange
        self.routing_key = routing_key
        self.body = body
        self.headers = headers


def _shortstr(value: str) -> bytes:
    encoded = _SHORTSTRS.get(value)
    if encoded is None:
        raw = value.encode("utf-8")
        if len(raw) > 255:
            raise Unencodable(f"AMQP short string longer than 255 octets: {value[:40]!r}…")
        encoded = bytes((len(raw),)) + raw
        if len(_SHORTSTRS) < 1000:  # exchanges and routing keys: a handful of distinct values
            _SHORTSTRS[value] = encoded
    return encoded


_SHORTSTRS: dict[str, bytes] = {}


def header_table(headers: dict) -> bytes:
    """The headers as an AMQP field table; Unencodable with the reason if pamqp refuses them."""
    try:
        return field_table(headers)
    except Exception as exc:  # pamqp: TypeError, ValueError, RecursionError, AttributeError...
        raise Unencodable(f"headers: {exc}") from None


def marshal(channel: int, publish: Publish, message_id: str, max_frame: int) -> bytes:
    """The method, content header and body frames of one persistent, mandatory Basic.Publish;
    `max_frame`: the largest frame payload the broker takes (frame_max less 8)."""
    method = _PUBLISH.pack(60, 40, 0) + _shortstr(publish.exchange) + _shortstr(publish.routing_key) + b"\x01"
    flags = _CONTENT_TYPE | _DELIVERY_MODE | _MESSAGE_ID
    props = _JSON
    if publish.headers:
        flags |= _HEADERS
        props += header_table(publish.headers)
    raw_id = message_id.encode("ascii")
    props += b"\x02" + bytes((len(raw_id),)) + raw_id
    body = publish.body
    header = _CONTENT.pack(60, 0, len(body), flags) + props
    if len(header) > max_frame:  # a content header is never split: the broker would close the connection
        raise Unencodable(f"content header of {len(header)} octets exceeds the broker's frame size {max_frame}")
    parts = [
        _HEAD.pack(1, channel, len(method)), method, _FRAME_END,
        _HEAD.pack(2, channel, len(header)), header, _FRAME_END,
    ]
    for start in range(0, len(body), max_frame):
        chunk = body[start:start + max_frame]
        parts += (_HEAD.pack(3, channel, len(chunk)), chunk, _FRAME_END)
    return b"".join(parts)


class _Batch:
    """The publishes of one `write`: per publish None (confirmed) or the error, and a future
    done when all are settled. `observer(index, error)`, when set, hears each as it settles."""

    __slots__ = ("outcomes", "waiting", "future", "slots", "observer")

    def __init__(self, n: int, future: asyncio.Future):
        self.outcomes: list[BaseException | None] = [None] * n
        self.waiting = n
        self.future = future
        self.slots: list[_Slot] = []
        self.observer = None

    def settle(self, index: int, error: BaseException | None) -> None:
        self.outcomes[index] = error
        self.waiting -= 1
        if self.observer is not None:
            self.observer(index, error)
        if self.waiting == 0 and not self.future.done():
            self.future.set_result(None)


class _Slot:
    """Stands in for aiormq's per-publish confirmation future in `channel.confirmations`:
    aiormq calls done(), cancelled(), set_result() and set_exception() on it."""

    __slots__ = ("batch", "index", "settled", "message_id", "channel")

    def __init__(self, batch: _Batch, index: int, message_id: str, channel):
        self.batch = batch
        self.index = index
        self.settled = False
        self.message_id = message_id
        self.channel = channel

    def done(self) -> bool:
        return self.settled

    def cancelled(self) -> bool:
        return False

    def set_result(self, frame) -> None:
        self._settle(None if isinstance(frame, spec.Basic.Ack) else translate(DeliveryError(None, frame)))

    def set_exception(self, exc: BaseException) -> None:
        self._settle(translate(exc))  # aiormq's Nack, Return or closed channel, in our words

    def _settle(self, error: BaseException | None) -> None:
        if self.settled:
            return
        self.settled = True
        self.channel.message_id_delivery_tag.pop(self.message_id, None)
        self.batch.settle(self.index, error)


class BatchPublisher:
    """Publishes batches on one aiormq channel opened with publisher confirms."""

    def __init__(self, channel, *, coalesce: bool = False):
        self.channel = channel  # aiormq.Channel
        self.coalesce = coalesce
        self._open: ChannelFrame | None = None  # our last frame (coalesce), perhaps still queued
        # message ids only need to be unique among this channel's unconfirmed publishes
        # (aiormq finds a returned message's delivery tag by it)
        self._prefix = os.urandom(6).hex() + "-"
        self._count = 0
        self._number = channel.number
        self._max_frame = channel.max_content_size  # both fixed for the channel's life

    def encode(self, publish: Publish) -> tuple[str, bytes]:
        """(message id, frames) of one publish, ready for `send`; raises Unencodable."""
        self._count += 1
        message_id = f"{self._prefix}{self._count}"
        return message_id, marshal(self._number, publish, message_id, self._max_frame)

    async def publish(self, batch: Sequence[Publish], timeout: float) -> list[BaseException | None]:
        """Publish all, wait for the broker's answers; per publish None (confirmed) or the error."""
        outcomes: list[BaseException | None] = [None] * len(batch)
        encoded = []
        where = []
        for i, publish in enumerate(batch):
            try:
                encoded.append(self.encode(publish))
            except Unencodable as exc:
                outcomes[i] = exc
                continue
            where.append(i)
        for i, outcome in zip(where, await self.send(encoded, timeout)):
            outcomes[i] = outcome
        return outcomes

    async def send(self, encoded: Sequence[tuple[str, bytes]], timeout: float) -> list[BaseException | None]:
        """Write encoded publishes in one go, wait for the broker's answers; per publish None
        (confirmed) or the error."""
        if not encoded:
            return []
        pending = await self.write(encoded)
        # asyncio.wait, not wait_for: on Python 3.11 wait_for returns the result, and drops the
        # cancel, when the task is cancelled just as the future completes (a session ending
        # as the confirms arrive would then wait for its settler forever). A cancel always
        # propagates here; the future is left to aiormq.
        future = pending.future
        done, _ = await asyncio.wait((future,), timeout=timeout)
        if not done:
            for slot in pending.slots:
                slot.set_exception(PublishTimeout(f"no confirm from the broker within {timeout:.0f}s"))
        elif future.cancelled() or future.exception() is not None:  # the channel closed under the batch
            error = BrokerLost("publishing: the channel closed") if future.cancelled() else future.exception()
            for slot in pending.slots:
                slot.set_exception(error)
        return pending.outcomes

    async def write(self, encoded: Sequence[tuple[str, bytes]]) -> _Batch:
        """Write encoded publishes in one go and number them; the batch's future is done once
        the broker answered every one (aiormq rejects it if the channel closes first)."""
        channel = self.channel
        if channel.is_closed:
            raise BrokerLost(f"publishing: {channel!r} is closed")
        with mapped("publishing"):
            future = channel.create_future()  # rejected by aiormq if the channel closes
        pending = _Batch(len(encoded), future)
        slots = pending.slots
        payload = b"".join([frames for _, frames in encoded])
        async with channel.lock:
            if not self._joined(payload):
                frame = ChannelFrame(payload=bytearray(payload) if self.coalesce else payload, should_close=False)
                await channel.write_queue.put(frame)
                self._open = frame
            # From here to the end of the lock no await: neither the writer nor the reader
            # runs before every publish of the batch has its number and its slot.
            confirmations = channel.confirmations
            ids = channel.message_id_delivery_tag
            tag = channel.delivery_tag
            for i, (message_id, _) in enumerate(encoded):
                tag += 1
                slot = _Slot(pending, i, message_id, channel)
                confirmations[tag] = slot
                ids[message_id] = tag
                slots.append(slot)
            channel.delivery_tag = tag
        return pending

    def _joined(self, payload: bytes) -> bool:
        """(coalesce) Add `payload` to our last frame if the writer has not taken it yet and
        nothing is queued behind it."""
        frame = self._open
        if frame is None or not self.coalesce:
            return False
        queued = getattr(self.channel.write_queue, "_queue", None)  # asyncio.Queue's deque
        if not queued or queued[-1] is not frame or len(frame.payload) + len(payload) > COALESCE_OCTETS:
            return False
        frame.payload.extend(payload)
        return True
