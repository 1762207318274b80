"""A lane's consumer is called in place as each delivery is read, not in a task aiormq makes
per delivery (mta.broker.client._in_place): same frames, same order, same message; a
coroutine consumer, or an aiormq without the readers used, keeps aiormq's own way."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import aiormq
from aiormq.tools import awaitable

from mta.broker.client import Consuming, _in_place


class Channel:
    """aiormq's channel as `_in_place` reads it: the consumers by tag (as aiormq keeps them:
    wrapped by `awaitable`), the header and body readers, and its own delivery handler."""

    def __init__(self):
        self.consumers: dict = {}
        self.tasks: list = []  # deliveries aiormq's own handler took (it makes a task of each)
        self.reads: list[str] = []

    async def _Channel__get_content_header(self):
        self.reads.append("header")
        await asyncio.sleep(0)
        return SimpleNamespace(body_size=4)

    async def _read_content(self, frame, header):
        self.reads.append("body")
        await asyncio.sleep(0)
        return SimpleNamespace(delivery=frame, header=header, body=b"body")

    async def _on_deliver_frame(self, frame):
        self.tasks.append(frame.delivery_tag)

    async def basic_consume(self, queue, callback):
        self.consumers["ctag"] = awaitable(callback)
        return SimpleNamespace(consumer_tag="ctag")


def deliver(channel, tag: int, consumer_tag: str = "ctag"):
    return channel._on_deliver_frame(SimpleNamespace(consumer_tag=consumer_tag, delivery_tag=tag))


def test_aiormq_has_the_readers_the_lane_calls_in_place_with():
    for name in ("_Channel__get_content_header", "_read_content", "_on_deliver_frame"):
        assert callable(getattr(aiormq.Channel, name, None)), name


def test_a_plain_consumer_is_called_as_each_delivery_is_read_in_order():
    async def main():
        channel = Channel()
        got = []
        await Consuming(channel).basic_consume("mta.bulk", lambda message: got.append(message.delivery.delivery_tag))
        for tag in (1, 2, 3):
            await deliver(channel, tag)
            assert got[-1] == tag  # in place: before the next frame is read
        return channel, got

    channel, got = asyncio.run(main())
    assert got == [1, 2, 3] and channel.tasks == [] and channel.reads == ["header", "body"] * 3


def test_a_coroutine_consumer_or_an_unknown_tag_keeps_aiormqs_way():
    async def main():
        channel = Channel()

        async def consumer(message):
            raise AssertionError("aiormq's task runs this one")

        await Consuming(channel).basic_consume("mta.bulk", consumer)
        await deliver(channel, 1)
        await deliver(channel, 2, consumer_tag="gone")
        return channel

    channel = asyncio.run(main())
    assert channel.tasks == [1, 2] and channel.reads == []


def test_a_consumer_cancelled_while_its_delivery_is_read_does_not_get_it():
    async def main():
        channel = Channel()
        got = []
        await Consuming(channel).basic_consume("mta.bulk", got.append)
        reading = asyncio.ensure_future(deliver(channel, 1))
        await asyncio.sleep(0)
        del channel.consumers["ctag"]  # basic.cancel meanwhile
        await reading
        return got

    assert asyncio.run(main()) == []


def test_what_a_consumer_raises_is_logged_and_the_next_delivery_still_comes(caplog):
    async def main():
        channel = Channel()
        got = []

        def consumer(message):
            got.append(message.delivery.delivery_tag)
            if len(got) == 1:
                raise RuntimeError("a bug")

        await Consuming(channel).basic_consume("mta.bulk", consumer)
        await deliver(channel, 1)
        await deliver(channel, 2)
        return got

    with caplog.at_level(logging.ERROR, logger="mta.broker"):
        assert asyncio.run(main()) == [1, 2]
    assert "a consumer callback failed on delivery 1" in caplog.text


def test_a_channel_without_the_readers_is_left_as_it_is():
    channel = SimpleNamespace(consumers={}, _on_deliver_frame=object())
    handler = channel._on_deliver_frame
    assert not _in_place(channel) and channel._on_deliver_frame is handler


def test_consuming_twice_on_one_channel_wraps_its_handler_once():
    channel = Channel()
    assert _in_place(channel)
    handler = channel._on_deliver_frame
    assert _in_place(channel) and channel._on_deliver_frame is handler
