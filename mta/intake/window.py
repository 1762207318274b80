"""Taking deliveries in: how many octets a lane holds, and big bodies decoded off the loop.

Theory of operation. The broker bounds a consumer by message count only (`basic.qos`;
RabbitMQ implements no prefetch-size, and a new count applies to consumers started after
it, not to a running one), so 1,000 deliveries of 20 MB would be 20 GB in memory. A
`LaneWindow` holds each lane to `broker.prefetch_bytes` as well:

- a delivery is *taken* (decoded, routed) while the octets taken and not yet settled are
  at most the bound, so they never exceed it by more than one message; otherwise it waits,
  raw and in arrival order, and the consumer is cancelled: the broker stops pushing (what
  it had sent already still arrives, and waits);
- settlements take waiting deliveries first; once none wait and the unsettled octets are
  at most half the bound, a new consumer starts whose prefetch count fits the room left at
  the lane's size estimate (`window_count`), so the next burst fits the bound. The first
  consumer starts with a count of one: the first message gives the estimate;
- the estimate follows a larger message at once and forgets it slowly (1 % per message),
  so a consumer sized for big mail is replaced by a larger one (when the room is twice its
  count, or the whole count prefetch) only after a run of small mail.

Every delivery enters the channel's AckBook on arrival, waiting or not: a `multiple=True`
acknowledgement must never cover a delivery that has not been settled.

A body over OFF_LOOP_BYTES is decoded in a thread (`OffLoop`): JSON, base64 and long-line
repair of a 20 MB message take about a second, and the event loop serves the rest
meanwhile; the long steps work in pieces so that the GIL changes hands (mta.longlines,
mta.message).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mta.broker.client import Delivery
from mta.settle.acks import AckBook

log = logging.getLogger("mta.intake")

# Bodies larger than this are decoded in a thread: below it a decode takes at most a
# millisecond or two on the loop, less than handing it over would save.
OFF_LOOP_BYTES = 256 * 1024
FORGET = 0.99  # the size estimate keeps this much of itself per message


def window_count(room: int, estimate: float, prefetch: int) -> int:
    """How many more deliveries of about `estimate` octets fit in `room`: 1 to `prefetch`."""
    if estimate <= 0:
        return prefetch
    return max(1, min(prefetch, int(room // estimate)))


class WindowBook(AckBook):
    """An AckBook that tells the lane's window when a delivery leaves memory."""

    def __init__(self, channel, window: "LaneWindow"):
        super().__init__(channel)
        self.window = window

    def settled(self, tag: int) -> None:
        self._done.add(tag)  # AckBook.settled, inline: once per message
        self.window.release(tag)

    async def flush(self) -> None:
        for tag in self.requeue:  # given back to the broker: out of memory too
            self.window.release(tag)
        await super().flush()


class LaneWindow:
    """One lane's consumer, held to `prefetch` deliveries and about `limit` octets."""

    def __init__(self, channel, queue: str, prefetch: int, limit: int, take: Callable[[Delivery], None]):
        self.channel = channel  # the lane's channel (mta.broker.client.Consuming)
        self.queue = queue
        self.prefetch = prefetch
        self.limit = limit
        self.take = take
        self.book = WindowBook(channel, self)
        self.sizes: dict[int, int] = {}  # delivery tag -> octets, for every unsettled delivery
        self.unsettled = 0  # octets in memory: taken or waiting
        self.taken = 0  # octets taken and not settled
        self.waiting: deque[Delivery] = deque()
        self.estimate = 0.0
        self.count = 0  # the prefetch count of the running consumer; 0: none
        self.consumer_tag: str | None = None
        self.closed = False
        self.most_taken = 0  # the highest `taken` seen, logged at shutdown
        self._steering: asyncio.Future | None = None
        self._draining = False

    async def start(self) -> None:
        await self._consume(1)

    def on_delivery(self, message: Delivery) -> None:
        # Once per message: the book entry, the counting and the take are inline, and the
        # consumer is looked at only off the common case: the whole count prefetch and
        # within the bound, nothing waiting.
        tag = message.delivery.delivery_tag
        size = len(message.body)
        self.book._order.append(tag)  # AckBook.received
        self.sizes[tag] = size
        unsettled = self.unsettled = self.unsettled + size
        kept = self.estimate * FORGET
        self.estimate = size if size > kept else kept
        if self.waiting or self.taken > self.limit or self.closed:
            self.waiting.append(message)
        else:
            taken = self.taken = self.taken + size  # _take
            if taken > self.most_taken:
                self.most_taken = taken
            self.take(message)
        if (self.count != self.prefetch or unsettled > self.limit or self.waiting or self.closed) \
                and self._wanted() != self.count:
            self._steer_soon()

    def release(self, tag: int) -> None:
        size = self.sizes.pop(tag, None)
        if size is None:
            return
        unsettled = self.unsettled = self.unsettled - size
        self.taken -= size
        if self.waiting and not self._draining:
            self._draining = True
            asyncio.get_running_loop().call_soon(self._drain)  # not inside the settler's loop
        elif (self.count != self.prefetch or unsettled > self.limit or self.waiting or self.closed) \
                and self._wanted() != self.count:  # (off the common case, as above)
            self._steer_soon()

    async def cancel(self, _tag: str | None = None) -> None:
        """Stop for good (SIGTERM): no new consumer, and what waits goes back to the broker."""
        self.closed = True
        log.info("%s: at most %d octets taken and not settled at a time (prefetch_bytes %d)",
                 self.queue, self.most_taken, self.limit)
        while self.waiting:
            tag = self.waiting.popleft().delivery.delivery_tag
            self.unsettled -= self.sizes.pop(tag, 0)
            self.book.requeue.append(tag)
        tag, self.consumer_tag, self.count = self.consumer_tag, None, 0
        if tag is not None:
            await self.channel.basic_cancel(tag)

    # ---- inside

    def _take(self, message: Delivery, size: int) -> None:
        self.taken += size
        if self.taken > self.most_taken:
            self.most_taken = self.taken
        self.take(message)

    def _drain(self) -> None:
        self._draining = False
        while self.waiting and self.taken <= self.limit and not self.closed:
            message = self.waiting.popleft()
            self._take(message, len(message.body))
        if self._wanted() != self.count:
            self._steer_soon()

    def _wanted(self) -> int:
        """The prefetch count the consumer should have now; 0: no consumer."""
        if self.closed or self.waiting:
            return 0
        room = self.limit - self.unsettled
        if self.count:
            if room < 0:
                return 0
            # a replacement: the running consumer may still bring its count before it stops
            fits = window_count(room - self.count * self.estimate, self.estimate, self.prefetch)
            return fits if fits > self.count and fits >= min(2 * self.count, self.prefetch) else self.count
        if self.unsettled > self.limit // 2:
            return 0
        return window_count(room, self.estimate, self.prefetch)

    def _steer_soon(self) -> None:
        if self._steering is None:
            self._steering = asyncio.ensure_future(self._steer())

    async def _steer(self) -> None:
        """Cancel, start or replace the consumer until it is what `_wanted` says."""
        try:
            while True:
                want = self._wanted()
                if want == self.count and (want > 0) == (self.consumer_tag is not None):
                    return  # (a consumer started while a shutdown stopped the window is cancelled)
                if self.consumer_tag is not None:
                    tag, self.consumer_tag, self.count = self.consumer_tag, None, 0
                    await self.channel.basic_cancel(tag)
                if want and not self.closed:
                    await self._consume(want)
        except Exception as exc:  # the channel is gone: the session ends and a new one starts
            log.debug("flow control of %s stopped: %s", self.queue, exc)
        finally:
            self._steering = None

    async def _consume(self, count: int) -> None:
        self.count = count
        await self.channel.basic_qos(prefetch_count=count)  # for the consumer started next
        self.consumer_tag = (await self.channel.basic_consume(self.queue, self.on_delivery)).consumer_tag


class OffLoop:
    """Runs big decodes in one thread, and hands each outcome back on the loop."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None

    def run(self, fn: Callable[..., Any], args: tuple, then: Callable[[Any], None]) -> None:
        """`then(result)`, or `then(exception)` if `fn` raised, on the event loop."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="mta-intake")
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

        def done(f: asyncio.Future) -> None:
            if not f.cancelled():  # (cancelled: the loop is closing)
                then(f.exception() or f.result())

        future.add_done_callback(done)
