"""Batched confirmed publishes (mta/publish.py) against the real broker: confirmed ones
arrive intact, an unroutable one is reported per publish, a closed channel fails them all."""

import asyncio

import aio_pika
import pytest
from aiormq.exceptions import PublishError

from mta.publish import BatchPublisher, Publish


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
    assert isinstance(outcomes[25], PublishError)  # returned: no queue took it
    assert second == [None]
    bodies = [g[0] for g in got]
    assert bodies == [f"m{i}".encode() for i in range(50)] + [b"x" * 300_000, b"again"]
    assert [g[1].get("n") for g in got[:50]] == [i if i % 2 else None for i in range(50)]
    assert all(g[2] == aio_pika.DeliveryMode.PERSISTENT for g in got)
