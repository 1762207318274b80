"""Delay queues stay few and never take mail with them: whatever `retries` and
`maxdelivertime` producers send, retries wait in the ladder's queues only (one per lane
and rung), a wait RabbitMQ cannot express is `invalid` at intake, and the consumer keeps
going. A classic delay queue has an expiry, and the broker deletes an unused queue with
its messages in it; the MTA's redeclaration keeps a queue in use alive."""

import asyncio
import math
import random
import time

import aio_pika
import pytest

from mta.broker.topology import LANES, Topology, delay_queue
from shaper.retry import DELAY_LADDER
from tests.testbed.amqp import ResultCollector, make_message, publish, queue_info
from tests.testbed.checks import assert_each_final, run_id

FIXED = {"mta.single", "mta.bulk", "mta.results", "mta.invalid", "mta.quarantine", "mta.inbound.unmatched"}
LADDER = {delay_queue(lane, s) for lane in LANES for s in DELAY_LADDER}


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


@pytest.mark.timeout(240)
def test_random_retry_lists_use_only_the_ladder_queues(vhost, rabbit, sinks, mta_config, start_mta):
    mta = start_mta(mta_config(default={"retry_intervals": ["1s", "2s"], "max_age": "30s"}))
    run = run_id()
    rng = random.Random(20261202)
    deferred = {}
    for i in range(200):
        retries = [round(_log_uniform(rng, 3, 4e6), 3) for _ in range(rng.randint(1, 4))]
        extra = {"retries": retries}
        if rng.random() < 0.7:  # most with a long life of their own, so the waits vary
            extra["maxdelivertime"] = round(_log_uniform(rng, 60, 4e6), 3)
        deferred[f"dq-{run}-{i}"] = (f"temp-{run}-{i}@ok{1 + i % 3}.test", rng.choice(LANES), extra)
    invalid = {
        f"dq-{run}-huge-retry": {"retries": [5e6]},
        f"dq-{run}-huge-life": {"retries": [5e6], "maxdelivertime": 1e7},
        f"dq-{run}-huge-maxdelivertime": {"maxdelivertime": 1e7},
    }
    for lane in LANES:
        publish(vhost, lane, [make_message(i, r, **extra) for i, (r, l, extra) in deferred.items() if l == lane])
    publish(vhost, "bulk", [make_message(i, f"temp-{i}@ok1.test", **extra) for i, extra in invalid.items()])

    collector = ResultCollector(vhost)
    collector.collect(invalid, timeout=120, settle=0.5,
                      until=lambda c: all(c.by_id.get(i) for i in deferred))
    queues = set(rabbit.queues(vhost))
    delay_queues = {q for q in queues - FIXED if not q.startswith("amq.gen-")}  # amq.gen: control
    assert delay_queues <= LADDER, f"{len(delay_queues)} delay queues: {sorted(delay_queues - LADDER)[:20]}"
    assert len(delay_queues) <= len(LADDER)

    assert_each_final(collector.by_id, invalid, "invalid")
    assert all(collector.by_id.get(i) and collector.by_id[i][0]["status"] == "deferred" for i in deferred), \
        [i for i in deferred if not collector.by_id.get(i)]

    # the session lived through it all: a plain message still goes out, nothing reconnected
    plain = {f"dq-{run}-plain": f"user-{run}@ok2.test"}
    publish(vhost, "single", [make_message(i, r) for i, r in plain.items()])
    collector.collect(plain, timeout=30, settle=0.2)
    assert_each_final(collector.by_id, plain, "delivered")
    assert mta.alive()
    log = mta.log_text()
    assert "reconnecting" not in log and "declaring a delay queue failed" not in log, mta.log_tail()


async def _keep_redeclaring(url: str, queue_type: str, name: str) -> int:
    """A queue with a 2 s expiry and one message in it, redeclared every 0.3 s for 5 s;
    how many messages it holds then."""
    conn = await aio_pika.connect(url)
    try:
        channel = await conn.channel(publisher_confirms=True)
        args = {"x-queue-type": queue_type, "x-expires": 2000}
        await channel.declare_queue(name, durable=True, arguments=args)
        await channel.default_exchange.publish(
            aio_pika.Message(b"mail", delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=name)
        started = time.monotonic()
        while time.monotonic() - started < 5.0:
            queue = await channel.declare_queue(name, durable=True, arguments=args)
            await asyncio.sleep(0.3)
        return queue.declaration_result.message_count
    finally:
        await conn.close()


@pytest.mark.timeout(60)
def test_redeclaring_keeps_a_classic_queue_but_not_a_quorum_queue(vhost):
    """Why quorum delay queues get no `x-expires` (RabbitMQ 3.10): redeclaring renews a
    classic queue's expiry, not a quorum queue's, which is deleted with its message (and
    the next declaration makes a new, empty one)."""
    assert asyncio.run(_keep_redeclaring(vhost, "classic", "trap-classic")) == 1
    assert asyncio.run(_keep_redeclaring(vhost, "quorum", "trap-quorum")) == 0


async def _publish_for(url: str, seconds: float, every: float, lease: float) -> int:
    """Publish into the 1 s delay queue through Topology for ``seconds``, one copy every
    ``every`` s, with a short ``lease`` (the queue's expiry is its TTL plus the lease)."""
    conn = await aio_pika.connect(url)
    try:
        channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
        topology = Topology("classic", 10, lease=lease)
        await topology.declare(channel)
        sent = 0
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            name = await topology.ensure_delay(channel, "bulk", 1)
            await channel.default_exchange.publish(
                aio_pika.Message(make_message(f"x{sent}", "u@ok1.test"), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=name, mandatory=True)
            sent += 1
            await asyncio.sleep(every)
        return sent
    finally:
        await conn.close()


@pytest.mark.timeout(90)
def test_a_classic_delay_queue_in_use_outlives_its_expiry_and_loses_nothing(vhost, rabbit):
    """Published into for three times its expiry (TTL 1 s + lease 1 s): redeclared in
    time, every copy comes back to the lane; and once unused, the queue goes away."""
    sent = asyncio.run(_publish_for(vhost, seconds=6.0, every=0.25, lease=1.0))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (queue_info(vhost, "mta.bulk") or {}).get("messages", 0) < sent:
        time.sleep(0.2)
    assert queue_info(vhost, "mta.bulk")["messages"] == sent, f"of {sent} copies some were lost"
    # (rabbitmqctl, not a passive declaration: that would renew the queue's expiry)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and delay_queue("bulk", 1) in rabbit.queues(vhost):
        time.sleep(0.5)
    assert delay_queue("bulk", 1) not in rabbit.queues(vhost), "an unused delay queue stays forever"
