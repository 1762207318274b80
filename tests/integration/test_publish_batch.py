"""Batched confirmed publishes (mta/broker/publish.py) against the real broker: confirmed ones
arrive intact, an unroutable one is reported per publish, a closed channel fails them all."""

import asyncio
import json

import aio_pika
import pytest
from aiormq.exceptions import PublishError

from mta.broker.errors import PublishRefused
from mta.broker.publish import BatchPublisher, Publish
from tests.testbed.rawheaders import RawLongStr, apublish_raw


async def _run(url: str):
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        queue = await channel.declare_queue("batch-test", durable=True)
        publisher = BatchPublisher(await channel.get_underlay_channel())
        batch = [Publish("", queue.name, f"m{i}".encode(), {"n": i} if i % 2 else None) for i in range(50)]
        batch.insert(25, Publish("", "no-such-queue", b"lost"))
        batch.append(Publish("", queue.name, b"x" * 300_000))  # several body frames
        outcomes = await publisher.publish(batch, timeout=30)
        second = await publisher.publish([Publish("", queue.name, b"again")], timeout=30)
        got = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            got.append((message.body, message.headers, message.delivery_mode))
        await (await channel.get_underlay_channel()).close()
        with pytest.raises(Exception):
            await publisher.publish([Publish("", queue.name, b"late")], timeout=5)
        return outcomes, second, got


@pytest.mark.timeout(60)
def test_batch_confirms_returns_and_bodies(vhost):
    outcomes, second, got = asyncio.run(_run(vhost))
    assert [o is None for o in outcomes] == [True] * 25 + [False] + [True] * 26
    assert isinstance(outcomes[25], PublishRefused)  # returned: no queue took it
    assert isinstance(outcomes[25].__cause__, PublishError)
    assert second == [None]
    bodies = [g[0] for g in got]
    assert bodies == [f"m{i}".encode() for i in range(50)] + [b"x" * 300_000, b"again"]
    assert [g[1].get("n") for g in got[:50]] == [i if i % 2 else None for i in range(50)]
    assert all(g[2] == aio_pika.DeliveryMode.PERSISTENT for g in got)


# ---- the client's count of publishes stays the broker's


async def _desync(url: str):
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        ok = await channel.declare_queue("ok", durable=True)
        # every publish to `full` is refused with a Nack, not dropped
        await channel.declare_queue("full", durable=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
        publisher = BatchPublisher(await channel.get_underlay_channel())
        first = await publisher.publish([
            Publish("", "ok", b"m0"),
            Publish("", "ok", b"bad", {"x-producer": b"\xff\xfe"}),  # no AMQP table type for bytes
            Publish("", "ok", b"m1"),
            Publish("", "ok", b"big", {"x-big": "h" * 140_000}),  # a content header over frame_max
            Publish("", "ok", b"m2"),
        ], timeout=30)
        second = await publisher.publish([
            Publish("", "ok", b"m3"), Publish("", "full", b"refused-1"), Publish("", "ok", b"m4"),
            Publish("", "full", b"refused-2"), Publish("", "ok", b"m5"),
        ], timeout=30)
        got = []
        while (message := await ok.get(no_ack=True, fail=False)) is not None:
            got.append(message.body)
        return first, second, got, channel.is_closed


@pytest.mark.timeout(60)
def test_unencodable_publishes_fail_alone_and_nacks_reach_their_own_publish(vhost):
    first, second, got, closed = asyncio.run(_desync(vhost))
    assert [type(o).__name__ for o in first] == ["NoneType", "Unencodable", "NoneType", "Unencodable", "NoneType"]
    assert [type(o).__name__ for o in second] == ["NoneType", "PublishRefused", "NoneType", "PublishRefused", "NoneType"]
    assert [type(o.__cause__).__name__ for o in second if o is not None] == ["DeliveryError", "DeliveryError"]
    assert got == [b"m0", b"m1", b"m2", b"m3", b"m4", b"m5"]
    assert not closed  # the too-large header never reached the broker


async def _settle_with_a_nack(url: str, messages: list[tuple[bytes, dict]], bounce: int):
    """The settler on real channels: `messages` are fetched from queue `src` (basic.get,
    unacknowledged), each settled (invalid, or delivered; `bounce` bounced), then what is
    left in `src` is read back."""
    from mta.intake.message import InvalidMessage, decode
    from mta.settle.acks import AckBook
    from mta.settle.settler import Settler
    from mta.broker.topology import Topology

    connection = await aio_pika.connect(url)
    async with connection:
        publish_ch = await connection.channel(publisher_confirms=True, on_return_raises=True)
        topology = Topology("quorum", 5)
        await topology.declare(publish_ch)
        blocker = await publish_ch.declare_queue(
            "bounces-full", durable=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
        await blocker.bind("mta.results", "bounced")  # every bounced result is nacked
        src = await publish_ch.declare_queue("src", durable=True)
        await apublish_raw(url, "", "src", messages)

        consume_ch = await (await connection.channel()).get_underlay_channel()
        book = AckBook(consume_ch)
        settler = Settler(publish_ch, topology, publish_timeout=20)
        for n in range(len(messages)):
            got = await consume_ch.basic_get("src", no_ack=False)
            tag = got.delivery.delivery_tag
            book.received(tag)
            headers = got.header.properties.headers or {}
            try:
                job = decode(got.body, headers, "bulk", 1_800_000_000.0)
            except InvalidMessage as exc:
                settler.invalid(got.body, headers, str(exc), book, tag, "bulk", 1_800_000_000.0)
                continue
            job.attempts = 1
            settler.final(job, book, tag, "bounced" if n == bounce else "delivered", "hard" if n == bounce else None)
        runner = asyncio.create_task(settler.run())
        await asyncio.wait_for(settler.wait_idle(), 30)
        runner.cancel()
        left = []
        while (message := await src.get(no_ack=True, fail=False)) is not None:
            left.append((message.body, message.redelivered))
        invalid = []
        while (message := await (await publish_ch.get_queue("mta.invalid")).get(no_ack=True, fail=False)) is not None:
            invalid.append((message.body, message.headers))
        results = []
        while (message := await (await publish_ch.get_queue("mta.results")).get(no_ack=True, fail=False)) is not None:
            results.append(json.loads(message.body))
        return left, invalid, results, book.channel.is_closed


@pytest.mark.timeout(90)
def test_settler_credits_a_nack_to_its_delivery_next_to_an_unencodable_header(vhost):
    def good(n):
        return json.dumps({"id": f"m{n}", "recipient": f"u{n}@example.com", "envelope": "s@sender.test",
                           "mime": "Subject: x\r\n\r\nhi\r\n"}).encode()

    messages = [
        (good(0), {}),
        (b"not json", {"x-producer-blob": RawLongStr(b"\xff\xfe\xfd"), "x-trace": "t-1"}),
        (good(2), {}),
        (good(3), {}),  # its bounced result is nacked by the broker
        (good(4), {}),
    ]
    left, invalid, results, closed = asyncio.run(_settle_with_a_nack(vhost, messages, bounce=3))

    assert not closed
    # only the delivery whose publish the broker refused was not acknowledged: it is back
    assert left == [(good(3), True)]
    # the unencodable producer header did not take the batch down: its original is in
    # mta.invalid, without that header, with the reason
    assert len(invalid) == 1 and invalid[0][0] == b"not json"
    assert "x-producer-blob" not in invalid[0][1] and invalid[0][1]["x-trace"] == "t-1"
    assert "body is not valid JSON" in invalid[0][1]["x-mta-error"]
    assert "x-producer-blob" in invalid[0][1]["x-mta-error"]
    by_id = {}
    for r in results:
        by_id.setdefault(r.get("id"), []).append(r["status"])
    assert by_id["m0"] == by_id["m2"] == by_id["m4"] == ["delivered"]
    assert by_id[None] == ["invalid"]  # the body had no id: not JSON
