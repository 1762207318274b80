"""The broker calls the rest of the MTA makes, and aio-pika's and aiormq's quirks with them.

Everything outside `mta/broker/` talks to RabbitMQ through this module (or `publish`,
`topology`, `quarantine`): it never imports aio-pika or aiormq, and it catches only our
exceptions (`mta.broker.errors`). What lives here, and why:

- connections: `aio_pika.connect`, not `connect_robust`: a robust connection's `publish`
  waits for the reconnection without a timeout, and delivery tags do not survive it; the
  engine starts a new session instead (RELIABILITY.md).
- `Consuming`: a lane's aiormq channel, used below aio-pika (its IncomingMessage and its
  task per delivery cost a tenth of the CPU per message). Its calls raise `BrokerLost`.
  aiormq too starts a task per delivery for the consumer's callback (about 5 us each); a
  lane's callback is a plain function, so its channel calls it in place, as the delivery's
  last frame is read (`_in_place`), and only falls back to aiormq's task where it cannot.
- frames: aiormq's reader takes each frame with three awaited reads and pamqp's generic
  unmarshal; `mta.broker.frames` reads what the socket holds and cuts the frames out of it
  (a delivery's three frames in 9 us instead of 25-30 at 1 KB), installed at the first connect.
- close and consumer-cancel callbacks: aio-pika calls a close callback with the closed
  object and the reason, aiormq a cancel callback with the frame; the MTA only
  wants to know that it happened.
- `queue_numbers`: a passive declare of a missing queue closes its channel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import aio_pika
from pamqp import commands as spec

from mta.broker import frames
from mta.broker.errors import BrokerLost, BrokerUnreachable, mapped

log = logging.getLogger("mta.broker")

CONNECT_TIMEOUT = 10.0  # seconds for the broker to take a connection
CLOSE_TIMEOUT = 5.0  # seconds to close a connection politely before giving up on it
_FRAMES: list[bool] = []  # whether mta.broker.frames reads the frames (installed at the first connect)


class Delivery(Protocol):
    """What the MTA reads of a delivery (aiormq's DeliveredMessage): the body, the
    `delivery` frame (`delivery_tag`, `redelivered`) and `header.properties`
    (`headers`, `message_id`)."""

    body: bytes
    delivery: Any
    header: Any


async def connect(url: str, name: str | None = None) -> Any:
    """A new connection, reading its frames with mta.broker.frames; BrokerUnreachable (a
    BrokerLost) when the broker does not take it."""
    if not _FRAMES:
        _FRAMES.append(frames.install())
    properties = {"connection_name": name} if name else None
    try:
        return await aio_pika.connect(url, timeout=CONNECT_TIMEOUT, client_properties=properties)
    except (aio_pika.exceptions.AMQPException, OSError) as exc:  # TimeoutError is an OSError
        raise BrokerUnreachable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc


@asynccontextmanager
async def connected(url: str, name: str | None = None) -> AsyncIterator[Any]:
    """A connection for the length of a `with`, closed (or given up on) at its end."""
    connection = await connect(url, name)
    try:
        yield connection
    finally:
        await close(connection)


async def close(connection) -> None:
    """Close a connection that may be broken already: nothing left to save on it."""
    if connection is None or connection.is_closed:
        return
    try:
        with mapped("closing"):
            await asyncio.wait_for(connection.close(), CLOSE_TIMEOUT)
    except BrokerLost as exc:
        log.debug("closing a broker connection failed (%s); it is gone anyway", exc)


async def channel(connection, *, confirms: bool = False) -> Any:
    """A channel (aio-pika's). `confirms`: publisher confirms, and a publish no queue takes
    raises (`on_return_raises`: without it a mandatory publish that is returned succeeds)."""
    with mapped("opening a channel"):
        if confirms:
            return await connection.channel(publisher_confirms=True, on_return_raises=True)
        return await connection.channel()


def on_close(thing, callback: Callable[[], None]) -> None:
    """`callback()` once a connection or channel (aio-pika's) closes, whatever the reason."""
    thing.close_callbacks.add(lambda *_: callback())


def on_consumer_cancel(channel, callback: Callable[[], None]) -> None:
    """`callback()` when the broker cancels a consumer of this channel (its queue deleted or
    failed over): the channel stays open, so no close callback says it."""
    channel.channel.on_consumer_cancel_callbacks.add(lambda *_: callback())


class Consuming:
    """A consuming lane's aiormq channel; every call raises BrokerLost once it is gone.
    The method names and arguments are AMQP's (and aiormq's), as the fakes in tests have them."""

    __slots__ = ("channel", "closed_now")

    def __init__(self, channel):
        self.channel = channel  # aiormq's
        # `is_closed` in one call, asked once or twice per message (mta.settle.acks): what
        # aiormq's property reads, its closing future's `done`, bound here (a future it
        # makes once per channel); a channel without one is asked by its property.
        closing = getattr(channel, "_closing", None)
        self.closed_now = closing.done if isinstance(closing, asyncio.Future) else lambda: channel.is_closed

    @classmethod
    def of(cls, channel) -> "Consuming":
        """The lane over an aio-pika channel."""
        return cls(channel.channel)

    @property
    def is_closed(self) -> bool:
        return self.channel.is_closed

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = False) -> None:
        with mapped("acknowledging"):
            await self.channel.basic_ack(tag, multiple=multiple, wait=wait)

    async def basic_nack(self, tag: int, requeue: bool = True, wait: bool = False) -> None:
        with mapped("giving back"):
            await self.channel.basic_nack(tag, requeue=requeue, wait=wait)

    async def basic_qos(self, prefetch_count: int) -> None:
        with mapped("setting the prefetch"):
            await self.channel.basic_qos(prefetch_count=prefetch_count)

    async def basic_consume(self, queue: str, callback: Callable[[Delivery], None]) -> Any:
        """Start a consumer; the broker's ConsumeOk (its `consumer_tag`). `callback` runs in
        the channel's reader, once per delivery, in order: it must not block, and what it
        raises is logged (as aiormq logs a consumer task's exception)."""
        with mapped(f"consuming {queue}"):
            _in_place(self.channel)
            return await self.channel.basic_consume(queue, callback)

    async def basic_cancel(self, tag: str) -> None:
        with mapped("cancelling a consumer"):
            await self.channel.basic_cancel(tag)

    async def cancel(self, tag: str) -> None:
        """Stop the consumer `tag` (SIGTERM)."""
        await self.basic_cancel(tag)


def _in_place(channel) -> bool:
    """Have aiormq's `channel` call a plain consumer callback as each delivery is read,
    instead of in a task of its own per delivery (aiormq's `_on_deliver_frame` makes one);
    the same frames are read the same way, with aiormq's own readers. False: this aiormq
    lacks them (or a callback is a coroutine function), and its task per delivery stays."""
    read_header = getattr(channel, "_Channel__get_content_header", None)
    read_content = getattr(channel, "_read_content", None)
    consumers, tasks = getattr(channel, "consumers", None), getattr(channel, "_on_deliver_frame", None)
    if read_header is None or read_content is None or consumers is None or tasks is None:
        return False
    if getattr(tasks, "in_place", False):
        return True

    async def on_deliver_frame(frame) -> None:
        if getattr(consumers.get(frame.consumer_tag), "__wrapped__", None) is None:
            await tasks(frame)  # a coroutine function (aiormq wraps a plain one), or none: aiormq's way
            return
        message = await read_content(frame, await read_header())
        consumer = consumers.get(frame.consumer_tag)  # (cancelled meanwhile: not handed on, as in aiormq)
        if consumer is None:
            return
        try:
            consumer.__wrapped__(message)
        except Exception:
            log.exception("a consumer callback failed on delivery %s", frame.delivery_tag)

    on_deliver_frame.in_place = True
    channel._on_deliver_frame = on_deliver_frame
    return True


# ---- control messages (mta.ops.control)

async def declare_fanout(channel, name: str) -> Any:
    with mapped(f"declaring {name}"):
        return await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT, durable=True)


async def consume_control(channel, exchange: str, prefetch: int, max_length: int,
                          on_message: Callable[[Any], Awaitable[None]]) -> None:
    """Consume `exchange` with a private queue of at most `max_length` messages, `prefetch`
    unacknowledged at a time; `on_message` gets aio-pika's messages (body, headers) and
    acknowledges each with `acknowledge`."""
    with mapped("consuming control commands"):
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True, arguments={"x-max-length": max_length})
        await queue.bind(await declare_fanout(channel, exchange))
        await queue.consume(on_message)


async def acknowledge(message) -> None:
    """Acknowledge an aio-pika message; BrokerLost when its channel is gone."""
    with mapped("acknowledging a control message"):
        await message.ack()


async def publish_json(channel, routing_key: str, body: bytes, timeout: float, persistent: bool = False) -> None:
    """Publish `body` (JSON) to a queue by name on an aiormq channel with confirms and
    wait for the confirm: BrokerLost, PublishRefused (nacked, or no such queue), or
    BrokerLost from a TimeoutError when the broker did not confirm in time. `persistent`:
    a message for a lane (delivery mode 2), as producers publish them."""
    properties = spec.Basic.Properties(content_type="application/json", delivery_mode=2 if persistent else None)
    with mapped(f"publishing to {routing_key}"):
        await channel.basic_publish(body, exchange="", routing_key=routing_key, properties=properties,
                                    timeout=timeout)


def publishing(channel) -> Any:
    """The aiormq channel below an aio-pika one, for `publish_json` and `BatchPublisher`."""
    with mapped("publishing channel"):
        return channel.channel


# ---- the CLI's side (mta status, mta pause/resume/reload)

async def queue_numbers(connection, name: str) -> dict | None:
    """Depth and consumers of a queue, the broker's own numbers (None: not declared)."""
    # A passive declare of a missing queue closes the channel: one channel per queue.
    with mapped(f"looking at {name}"):
        ch = await connection.channel()
        try:
            queue = await ch.declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelClosed:  # not found (404), or not ours to see
            return None
        result = queue.declaration_result
        numbers = {"depth": result.message_count, "consumers": result.consumer_count}
        if not ch.is_closed:
            await ch.close()
    return numbers


async def reply_queue(connection, on_body: Callable[[bytes], None]) -> tuple[Any, str]:
    """A channel with confirms and a private queue the broker names (`amq.gen-...`), whose
    messages go to `on_body` unacknowledged (the queue dies with the connection)."""
    with mapped("declaring a reply queue"):
        ch = await connection.channel(publisher_confirms=True)
        replies = await ch.declare_queue(exclusive=True, auto_delete=True)

        async def on_reply(message) -> None:
            on_body(message.body)

        await replies.consume(on_reply, no_ack=True)
    return ch, replies.name


async def publish_fanout(channel, exchange: str, body: bytes, headers: dict, timeout: float) -> None:
    """Publish a JSON body on a fanout exchange (declared here) and wait for its confirm."""
    with mapped(f"publishing on {exchange}"):
        target = await declare_fanout(channel, exchange)
        await target.publish(aio_pika.Message(body, content_type="application/json", headers=headers),
                             routing_key="", timeout=timeout)


def redact(url: str) -> str:
    """A broker URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"


def blocked(connection) -> bool:
    """Has the broker blocked this connection's publishing (Connection.Blocked: a memory or
    disk alarm)? Publishes written meanwhile wait unread, unconfirmed, until it lifts."""
    underlay = getattr(connection, "transport", None)
    if underlay is None:
        return False
    unblocked = getattr(underlay.connection, "_Connection__connection_unblocked", None)  # aiormq keeps it private
    return unblocked is not None and not unblocked.is_set()
