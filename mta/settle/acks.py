"""Acknowledgements: what the settler owes each consuming channel, and what it writes for
one delivery.

An `AckBook` keeps one channel's delivery tags in the order they came, so a contiguous run
of settled tags goes out as one `multiple=True` ack; a `Settlement` is one delivery's
publishes, waiting for the broker's confirms before its tag is settled in its book.
"""

from __future__ import annotations

from collections import deque

from mta.intake.message import Job


class AckBook:
    """Acknowledgements for one consuming channel, in delivery-tag order."""

    def __init__(self, channel):
        self.channel = channel  # the lane's channel the deliveries came on (mta.broker.client.Consuming)
        # Whether it closed, in one call (Consuming.closed_now; a fake channel: its is_closed)
        self.closed_now = getattr(channel, "closed_now", None) or (lambda: channel.is_closed)
        self._order: deque[int] = deque()
        self._done: set[int] = set()
        self._acked: set[int] = set()
        self.requeue: list[int] = []

    def received(self, tag: int) -> None:
        self._order.append(tag)

    def settled(self, tag: int) -> None:
        self._done.add(tag)

    def give_back(self, tag: int) -> None:
        """Requeue `tag` with the next flush, unless it is settled or given back already
        (a tag both acknowledged and rejected would close the channel)."""
        if tag in self._done or tag in self._acked or tag in self.requeue or tag not in self._order:
            return
        self.requeue.append(tag)

    @property
    def open(self) -> int:
        return len(self._order)

    @property
    def closed(self) -> bool:
        """The channel is gone, and with it every delivery tag of this book (`closed_now()`
        says the same in one call: the checks once per message use it)."""
        return self.closed_now()

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
    __slots__ = ("book", "tag", "publishes", "final", "job")

    def __init__(self, book: AckBook, tag: int, publishes: list, final: tuple | None = None, job: Job | None = None):
        self.book = book
        self.tag = tag
        self.publishes = publishes  # (exchange key, routing key, body, headers)
        self.final = final  # a final outcome: (recent key, result, status, journal mark or None)
        self.job = job  # for a retry or held copy: what to settle instead if it cannot be encoded


def abandoned(job: Job) -> bool:
    """The consuming channel of the job's delivery closed: the broker gives the message to a
    consumer again (maybe this process, maybe already), so this copy must not be sent."""
    delivery = getattr(job, "delivery", None)  # (book, tag); jobs made outside the engine have none
    return delivery is not None and delivery[0].closed_now()
