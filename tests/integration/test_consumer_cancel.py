"""The broker cancels the MTA's consumer (its queue was deleted): the MTA notices, starts a
new broker session that declares the queue again, and delivers what is published next."""

import asyncio
import time

import aio_pika
import pytest

from tests.testbed.amqp import collect_results, make_message, publish, queue_info
from tests.testbed.checks import assert_each_final, run_id


async def _delete_queue(url: str, name: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(name)


@pytest.mark.timeout(120)
def test_consumer_cancel_recovers(vhost, sinks, start_mta):
    mta = start_mta()
    # The queue is declared before the consumer starts: delete it only once it is consumed.
    mta.wait_ready(vhost, require_consumer=True)
    asyncio.run(_delete_queue(vhost, "mta.bulk"))

    deadline = time.monotonic() + 60
    info = None
    while time.monotonic() < deadline:
        info = queue_info(vhost, "mta.bulk")
        if info is not None and info["consumers"] >= 1:
            break
        time.sleep(0.5)
    assert info is not None and info["consumers"] >= 1, f"mta.bulk not consumed again: {info}\n{mta.log_tail()}"
    assert "cancelled the consumer of mta.bulk" in mta.log_text()

    run = run_id()
    msgs = {f"cc-{run}-{i}": f"user{i}-{run}@ok1.test" for i in range(5)}
    publish(vhost, "bulk", [make_message(i, r) for i, r in msgs.items()])
    results = collect_results(vhost, msgs, timeout=60, settle=0.5)
    assert_each_final(results, msgs, "delivered")
    assert mta.alive()
