"""Accepted means durable, and a retry is recognised (mta.submission.publisher): what was
written but not confirmed when the client heard 451 is kept, the client's retry publishes
only what never reached the broker, and the same message sent again after a 250 is a new
message with an id of its own."""

import asyncio

import orjson

from mta.broker.publish import BatchPublisher, Publish
from mta.submission import publisher as publishing
from mta.submission.publisher import Submitter
from tests.fakes import FakePublishChannel


def _submitter(channel, patience=0.05) -> Submitter:
    submitter = Submitter("amqp://unused/", topology=None, patience=patience, now=lambda: 0.0)
    submitter.publisher = BatchPublisher(channel)
    return submitter


def _build(recipients):
    return lambda sid, indexes: [Publish("mta", "single", orjson.dumps({"recipient": recipients[i], "id": sid}))
                                 for i in indexes]


def _published(channel) -> list[tuple[str, str]]:
    return [(d["recipient"], d["id"]) for d in (orjson.loads(p["body"]) for p in channel.published)]


def test_a_late_confirm_answers_the_retry_without_a_second_publish():
    async def scenario():
        channel = FakePublishChannel(by_hand=True)
        submitter = _submitter(channel)
        build = _build(["a@x.test"])
        task = asyncio.create_task(submitter.submit("sid1", 1, 100, build))
        await asyncio.sleep(0)
        channel.drain()  # written, but the broker (blocked) does not confirm
        sid, why = await task
        assert sid == "sid1" and "did not confirm" in why
        channel.answer(1)  # the alarm clears: the broker takes it
        assert await submitter.submit("sid1", 1, 100, build) == ("sid1", None)
        assert _published(channel) == [("a@x.test", "sid1")]
        assert submitter.recognised == 1

    asyncio.run(scenario())


def test_a_refused_recipient_is_published_again_alone():
    async def scenario():
        channel = FakePublishChannel(by_hand=True)
        submitter = _submitter(channel, patience=1.0)
        build = _build(["a@x.test", "b@x.test", "c@x.test"])
        task = asyncio.create_task(submitter.submit("sid2", 3, 100, build))
        await asyncio.sleep(0)
        channel.drain()
        channel.answer(1)
        channel.answer(2, ack=False)  # nacked
        channel.answer(3)
        assert "refused" in (await task)[1]
        task = asyncio.create_task(submitter.submit("sid2", 3, 100, build))
        await asyncio.sleep(0)
        channel.drain()
        channel.answer(4)
        assert await task == ("sid2", None)
        assert [r for r, _ in _published(channel)] == ["a@x.test", "b@x.test", "c@x.test", "b@x.test"]

    asyncio.run(scenario())


def test_the_same_message_after_a_250_is_a_new_message():
    async def scenario():
        submitter = _submitter(FakePublishChannel(), patience=1.0)
        build = _build(["a@x.test"])
        first = await submitter.submit("sid5", 1, 100, build)
        second = await submitter.submit("sid5", 1, 100, build)
        assert first == ("sid5", None) and second[1] is None and second[0] != "sid5"
        assert _published(submitter.publisher.channel) == [("a@x.test", "sid5"), ("a@x.test", second[0])]

    asyncio.run(scenario())


def test_a_big_message_to_many_goes_out_a_chunk_at_a_time(monkeypatch):
    monkeypatch.setattr(publishing, "CHUNK_OCTETS", 250)

    async def scenario():
        channel = FakePublishChannel(by_hand=True)
        submitter = _submitter(channel, patience=1.0)
        task = asyncio.create_task(submitter.submit("sid6", 5, 100, _build([f"r{i}@x.test" for i in range(5)])))
        written, answered = [], 0
        while not task.done():
            await asyncio.sleep(0)
            channel.drain()
            if len(channel.published) > answered:
                written.append(len(channel.published) - answered)
                for number in range(answered + 1, len(channel.published) + 1):
                    channel.answer(number)
                answered = len(channel.published)
        return await task, written

    (sid, why), written = asyncio.run(scenario())
    assert why is None
    assert written == [2, 2, 1], "two messages of 100 octets to a chunk of 250, each chunk confirmed first"


def test_no_broker_no_publish_and_nothing_recorded():
    async def scenario():
        submitter = Submitter("amqp://unused/", topology=None, patience=1.0, now=lambda: 0.0)
        assert await submitter.submit("sid4", 1, 100, _build(["a@x.test"])) == ("sid4", "the broker is not connected")
        assert not submitter.record

    asyncio.run(scenario())


def test_a_retry_while_the_first_is_still_waiting_waits_for_it():
    async def scenario():
        channel = FakePublishChannel(by_hand=True)
        submitter = _submitter(channel, patience=1.0)
        build = _build(["a@x.test"])
        first = asyncio.create_task(submitter.submit("sid3", 1, 100, build))
        await asyncio.sleep(0)
        channel.drain()
        second = asyncio.create_task(submitter.submit("sid3", 1, 100, build))
        await asyncio.sleep(0.01)
        channel.answer(1)
        assert await first == ("sid3", None)
        assert (await second)[1] is None
        assert len(channel.published) == 1

    asyncio.run(scenario())


def test_a_broker_lost_between_two_chunks_is_a_451_not_a_crash(monkeypatch):
    monkeypatch.setattr(publishing, "CHUNK_OCTETS", 150)

    async def scenario():
        channel = FakePublishChannel(by_hand=True)
        submitter = _submitter(channel, patience=1.0)
        task = asyncio.create_task(submitter.submit("sid7", 3, 100, _build(["a@x.test", "b@x.test", "c@x.test"])))
        await asyncio.sleep(0)
        channel.drain()
        submitter.publisher = None  # the connection went while the first chunk was confirmed
        channel.answer(1)
        return await task, len(channel.published)

    (sid, why), published = asyncio.run(scenario())
    assert why == "the broker is not connected" and published == 1
