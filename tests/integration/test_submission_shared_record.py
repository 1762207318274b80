"""With a shared store, a client's retry is recognised by any process (SPEC §6, §7): process
A wrote a submission while the broker was blocked by a memory alarm and told its client
451; the broker confirmed it when the alarm cleared; the retry reaches process B, which
answers from the store and publishes nothing. Real broker, real Redis."""

import asyncio

import orjson
import pytest

from mta.broker.publish import Publish
from mta.broker.topology import Topology
from mta.cluster.store import Store
from mta.submission.publisher import Submitter
from tests.testbed.amqp import queue_info
from tests.testbed.util import wait_for


def _alarm(rabbit, on: bool) -> None:
    rabbit.ctl("set_vm_memory_high_watermark", "0" if on else "0.4")
    wait_for(lambda: ("memory" in rabbit.ctl("eval", "rabbit_alarm:get_alarms().").stdout) == on, timeout=60)


@pytest.mark.timeout(120)
def test_a_retry_on_another_process_is_answered_from_the_store(rabbit, vhost, redis_url):
    build = lambda sid, indexes: [Publish("mta", "single", orjson.dumps({"recipient": f"r{i}@ok1.test", "id": sid}))
                                  for i in indexes]

    async def scenario():
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        store = Store(redis_url)
        a, b = (Submitter(vhost, Topology("quorum", 10), 2.0, loop.time, store) for _ in range(2))
        runs = [asyncio.ensure_future(s.run(stop)) for s in (a, b)]
        while a.unavailable() or b.unavailable():
            await asyncio.sleep(0.05)
        await asyncio.to_thread(_alarm, rabbit, True)
        try:
            sid, why = await a.submit("sid-shared", 2, 100, build)
            assert sid == "sid-shared" and why is not None and "did not confirm" in why, why
        finally:
            await asyncio.to_thread(_alarm, rabbit, False)
        while not a.record["sid-shared"].done():  # the broker confirms what it held
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # A writes the confirmation to the store
        assert await b.submit("sid-shared", 2, 100, build) == ("sid-shared", None)
        assert b.recognised == 1
        stop.set()
        await asyncio.gather(*runs)
        await store.close()

    asyncio.run(scenario())
    assert queue_info(vhost, "mta.single")["messages"] == 2, "each recipient's message once"
