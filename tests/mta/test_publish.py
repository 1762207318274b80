"""The hand-marshalled Basic.Publish frames are byte for byte what pamqp produces."""

import pamqp.frame
import pytest
from aiormq.abc import ChannelFrame
from aiormq.exceptions import DeliveryError
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from mta.broker.errors import PublishRefused
from mta.broker.publish import BatchPublisher, Publish, marshal
from tests.fakes import FakePublishChannel


def reference(channel: int, p: Publish, message_id: str, max_body_frame: int) -> bytes:
    frames = [
        spec.Basic.Publish(exchange=p.exchange, routing_key=p.routing_key, mandatory=True),
        ContentHeader(body_size=len(p.body), properties=spec.Basic.Properties(
            content_type="application/json", headers=p.headers, delivery_mode=2, message_id=message_id)),
    ]
    frames += [ContentBody(p.body[i:i + max_body_frame]) for i in range(0, len(p.body), max_body_frame)]
    return b"".join(pamqp.frame.marshal(f, channel) for f in frames)


@pytest.mark.parametrize("publish", [
    Publish("mta.results", "delivered", b'{"id":"a"}'),
    Publish("", "mta.delay.bulk.60s", b"x" * 300_000,
            {"x-mta-id": "m1", "x-mta-attempts": 2, "x-mta-first": 1_795_000_000_000, "x-mta-results": "[]"}),
    Publish("", "mta.invalid", b"", {"x-mta-error": "body is not valid JSON", "x-mta-lane": "single"}),
    Publish("mta.results", "r\u00e9sultat", "\u00e9".encode() * 10),
])
def test_marshal_matches_pamqp(publish):
    assert marshal(3, publish, "0123abcd-17", 131_064) == reference(3, publish, "0123abcd-17", 131_064)


def test_too_long_routing_key_is_refused():
    with pytest.raises(ValueError):
        marshal(1, Publish("", "k" * 256, b"{}"), "id", 131_064)



# ---- the batch: encode first, then take delivery tags in step with the broker


def by_hand(**options) -> FakePublishChannel:
    """Frames wait in the write queue until `drain`; the test confirms by the broker's number."""
    return FakePublishChannel(by_hand=True, **options)


def _run(coro):
    import asyncio

    return asyncio.run(coro)


async def _publish_and_answer(channel, batch, nack=()):
    import asyncio

    publisher = BatchPublisher(channel)
    task = asyncio.create_task(publisher.publish(batch, timeout=5))
    await asyncio.sleep(0)
    channel.drain()
    written = len(channel.published)
    for number in range(written - len(channel.confirmations) + 1, written + 1):
        channel.answer(number, ack=number not in nack)
    return await task


def test_unencodable_publish_fails_alone_and_takes_no_delivery_tag():
    channel = by_hand()
    batch = [
        Publish("", "good-1", b"{}"),
        Publish("", "mta.invalid", b"x", {"x-producer": b"\xff\xfe"}),  # bytes: no AMQP table type for them
        Publish("", "good-2", b"{}"),
        Publish("", "k" * 256, b"{}"),  # routing key over 255 octets
        Publish("", "good-3", b"{}", {"x-big": "h" * 140_000}),  # content header larger than a frame
        Publish("", "good-4", b"{}", {"x-mta-first": 10 ** 30}),  # no AMQP integer that large
        Publish("", "good-5", b"{}"),
    ]

    outcomes = _run(_publish_and_answer(channel, batch))

    assert [type(o).__name__ for o in outcomes] == [
        "NoneType", "Unencodable", "NoneType", "Unencodable", "Unencodable", "Unencodable", "NoneType"]
    assert all(isinstance(o, ValueError) for o in outcomes if o is not None)
    assert channel.delivery_tag == len(channel.published) == 3  # the client's count is the broker's
    assert [p["routing_key"] for p in channel.published] == ["good-1", "good-2", "good-5"]
    assert not channel.confirmations and not channel.message_id_delivery_tag


def test_nack_is_credited_to_its_own_publish_after_an_unencodable_one():
    async def scenario():
        channel = by_hand()
        first = await _publish_and_answer(channel, [
            Publish("", "a", b"{}"), Publish("", "b", b"{}", {"bad": object()}), Publish("", "c", b"{}")])
        # the broker refuses the second publish of the next batch (numbered 4 by the broker)
        second = await _publish_and_answer(channel, [Publish("", f"q{i}", b"{}") for i in range(4)], nack={4})
        return channel, first, second

    channel, first, second = _run(scenario())
    assert first[0] is None and isinstance(first[1], ValueError) and first[2] is None
    assert second[0] is None and second[2] is None and second[3] is None
    assert isinstance(second[1], PublishRefused) and isinstance(second[1].__cause__, DeliveryError)
    assert [p["routing_key"] for p in channel.published] == ["a", "c", "q0", "q1", "q2", "q3"]


def test_a_write_cancelled_while_the_queue_is_full_takes_no_delivery_tag():
    import asyncio

    async def scenario():
        channel = by_hand(queue_size=1)
        channel.write_queue.put_nowait(ChannelFrame(payload=b"", should_close=False))  # the writer is behind
        task = asyncio.create_task(BatchPublisher(channel).publish([Publish("", "a", b"{}")] * 3, timeout=5))
        await asyncio.sleep(0.01)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        return channel

    channel = _run(scenario())
    assert channel.delivery_tag == 0
    assert not channel.confirmations and not channel.message_id_delivery_tag


def test_a_send_cancelled_as_its_confirms_arrive_is_cancelled():
    # The session ends (its settler cancelled) at the moment the last confirm comes in: the
    # cancel must not be lost, or the session would wait for its settler forever.
    import asyncio

    async def scenario():
        channel = by_hand()
        publisher = BatchPublisher(channel)
        task = asyncio.create_task(publisher.send([publisher.encode(Publish("", "a", b"{}"))], timeout=5))
        await asyncio.sleep(0)  # written, waiting for its confirm
        channel.drain()
        channel.answer(1)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "returned"

    assert _run(scenario()) == "cancelled"


def test_coalesced_writes_in_one_loop_turn_leave_in_one_frame_in_order():
    """Three callers' writes while the writer is busy: one frame in the queue, the broker
    numbers the publishes in the order written, and each caller hears its own answer."""
    from mta.broker.errors import PublishRefused

    async def scenario():
        channel = by_hand()
        publisher = BatchPublisher(channel, coalesce=True)
        batches = [await publisher.write([publisher.encode(Publish("", f"q{i}", b"{}"))]) for i in range(3)]
        queued = channel.write_queue.qsize()
        channel.drain()
        for number in (1, 2, 3):
            channel.answer(number, ack=number != 2)
        return channel, queued, batches

    channel, queued, batches = _run(scenario())
    assert queued == 1
    assert [p["routing_key"] for p in channel.published] == ["q0", "q1", "q2"]
    assert batches[0].outcomes == [None] and batches[2].outcomes == [None]
    assert isinstance(batches[1].outcomes[0], PublishRefused)


def test_a_frame_the_writer_took_or_one_behind_it_is_not_joined():
    async def scenario():
        channel = by_hand()
        publisher = BatchPublisher(channel, coalesce=True)
        await publisher.write([publisher.encode(Publish("", "first", b"{}"))])
        channel.drain()  # the writer took it: the next write is a frame of its own
        await publisher.write([publisher.encode(Publish("", "secnd", b"{}"))])
        channel.write_queue.put_nowait(ChannelFrame(payload=b"", should_close=False))  # say, a heartbeat
        await publisher.write([publisher.encode(Publish("", "third", b"{}"))])
        sizes = [len(frame.payload) for frame in channel.write_queue._queue]
        channel.drain()
        return channel, sizes

    channel, sizes = _run(scenario())
    assert len(sizes) == 3 and sizes[1] == 0 and sizes[0] == sizes[2]
    assert [p["routing_key"] for p in channel.published] == ["first", "secnd", "third"]
    assert channel.delivery_tag == 3
