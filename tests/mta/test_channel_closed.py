"""Whether a lane's channel closed is asked once or twice per message (a job's delivery
abandoned, a final outcome on a dead channel): `Consuming.closed_now` answers it in one call,
with what aiormq's `is_closed` reads (its closing future), and an AckBook passes it on."""

from __future__ import annotations

import asyncio

import aiormq

from mta.broker.client import Consuming
from mta.settle.acks import AckBook, abandoned


class Channel:
    """aiormq's channel as far as closing goes: `is_closed` is its closing future's state."""

    def __init__(self, closing: asyncio.Future):
        self._closing = closing

    @property
    def is_closed(self) -> bool:
        return self._closing.done()


class Job:
    delivery = None


def test_aiormq_reads_is_closed_from_its_closing_future():
    assert "_closing" in aiormq.base.Base.__slots__
    assert aiormq.base.Base.is_closed.fget.__code__.co_names == ("_closing", "done")


def test_closed_now_follows_the_channel_as_it_closes():
    async def main():
        closing = asyncio.get_running_loop().create_future()
        lane = Consuming(Channel(closing))
        book = AckBook(lane)
        job = Job()
        job.delivery = (book, 1)
        before = (lane.closed_now(), book.closed_now(), book.closed, abandoned(job))
        closing.set_exception(ConnectionError("gone"))  # aiormq closes it with the reason
        after = (lane.closed_now(), book.closed_now(), book.closed, abandoned(job))
        closing.exception()
        return before, after

    assert asyncio.run(main()) == ((False,) * 4, (True,) * 4)


def test_a_channel_without_a_closing_future_is_asked_by_its_property():
    class Plain:
        is_closed = False

    channel = Plain()
    lane = Consuming(channel)
    book = AckBook(channel)  # a fake lane: no closed_now of its own
    assert not lane.closed_now() and not book.closed_now()
    channel.is_closed = True
    assert lane.closed_now() and book.closed_now() and book.closed
