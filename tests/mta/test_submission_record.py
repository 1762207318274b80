"""Accepted means durable, and a retry is recognised (mta.submission.publisher): what was
written but not confirmed when the client heard 451 is kept, and the client's retry
publishes only what never reached the broker."""

import asyncio

import orjson

from mta.broker.publish import BatchPublisher, Publish
from mta.submission.publisher import Submitter
from tests.fakes import FakePublishChannel


def _submitter(channel, patience=0.05) -> Submitter:
    submitter = Submitter("amqp://unused/", topology=None, patience=patience, now=lambda: 0.0)
    submitter.publisher = BatchPublisher(channel)
    return submitter


def _build(recipients):
    return lambda indexes: [Publish("mta", "single", orjson.dumps({"recipient": recipients[i]})) for i in indexes]


def test_a_late_confirm_answers_the_retry_without_a_second_publish():
    async def scenario():
        channel = FakePublishChannel(by_hand=True)
        submitter = _submitter(channel)
        build = _build(["a@x.test"])
        task = asyncio.create_task(submitter.submit("sid1", 1, build))
        await asyncio.sleep(0)
        channel.drain()  # written, but the broker (blocked) does not confirm
        why = await task
        assert why is not None and "did not confirm" in why
        channel.answer(1)  # the alarm clears: the broker takes it
        assert await submitter.submit("sid1", 1, build) is None
        assert len(channel.published) == 1
        assert submitter.recognised == 1

    asyncio.run(scenario())


def test_a_refused_recipient_is_published_again_alone():
    async def scenario():
        channel = FakePublishChannel(by_hand=True)
        submitter = _submitter(channel, patience=1.0)
        build = _build(["a@x.test", "b@x.test", "c@x.test"])
        task = asyncio.create_task(submitter.submit("sid2", 3, build))
        await asyncio.sleep(0)
        channel.drain()
        channel.answer(1)
        channel.answer(2, ack=False)  # nacked
        channel.answer(3)
        assert "refused" in await task
        task = asyncio.create_task(submitter.submit("sid2", 3, build))
        await asyncio.sleep(0)
        channel.drain()
        channel.answer(4)
        assert await task is None
        assert [orjson.loads(p["body"])["recipient"] for p in channel.published] == \
            ["a@x.test", "b@x.test", "c@x.test", "b@x.test"]

    asyncio.run(scenario())


def test_a_retry_while_the_first_is_still_waiting_waits_for_it():
    async def scenario():
        channel = FakePublishChannel(by_hand=True)
        submitter = _submitter(channel, patience=1.0)
        build = _build(["a@x.test"])
        first = asyncio.create_task(submitter.submit("sid3", 1, build))
        await asyncio.sleep(0)
        channel.drain()
        second = asyncio.create_task(submitter.submit("sid3", 1, build))
        await asyncio.sleep(0.01)
        channel.answer(1)
        assert await first is None and await second is None
        assert len(channel.published) == 1

    asyncio.run(scenario())


def test_no_broker_no_publish():
    async def scenario():
        submitter = Submitter("amqp://unused/", topology=None, patience=1.0, now=lambda: 0.0)
        why = await submitter.submit("sid4", 1, _build(["a@x.test"]))
        assert why == "the broker is not connected"

    asyncio.run(scenario())
