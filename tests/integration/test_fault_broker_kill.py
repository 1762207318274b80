"""Scenario 2 of the fault suite: the broker is killed (kill -9) during a run and started
again 5 s later, while a producer is still publishing. The producer republishes what the
broker did not confirm; the MTA reconnects by itself. Ledger: every id one final status;
duplicates at the sinks within what was in flight (the MTA's prefetch windows plus the
producer's unconfirmed batch, per kill).

CI: one kill during 1,000 messages; slow: three kills during 5,000.
"""

from __future__ import annotations

import asyncio
import threading
import time

import aio_pika
import pytest

from tests.testbed.amqp import EXCHANGE, ResultCollector, make_message
from tests.testbed.checks import run_id
from tests.testbed.ledger import Ledger

PREFETCH, SINGLE_PREFETCH, BATCH = 200, 100, 100
DOMAINS = [f"ok{n}.test" for n in (1, 2, 3)] + [f"d{n}.test" for n in range(80, 90)]
SINK_ADDRESSES = ["127.0.1.1", "127.0.1.2", "127.0.1.3"] + [f"127.0.2.{n + 1}" for n in range(80, 90)]


async def _produce(url: str, bodies: list, stats: dict, stop: threading.Event) -> None:
    """Publish in batches with confirms; what is not confirmed is published again after
    reconnecting, until everything is confirmed."""
    todo = list(bodies)
    conn = None
    while todo and not stop.is_set():
        try:
            if conn is None or conn.is_closed:
                conn = await asyncio.wait_for(aio_pika.connect(url), 10)
                ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
                ex = await ch.get_exchange(EXCHANGE, ensure=False)
            batch, todo = todo[:BATCH], todo[BATCH:]
            outcomes = await asyncio.gather(*(asyncio.wait_for(ex.publish(
                aio_pika.Message(b, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                 content_type="application/json"),
                routing_key="bulk", mandatory=True), 10) for b in batch), return_exceptions=True)
            failed = [b for b, o in zip(batch, outcomes) if isinstance(o, BaseException)]
            stats["confirmed"] += len(batch) - len(failed)
            if failed:
                stats["republished"] += len(failed)
                todo = failed + todo
                raise ConnectionError(f"{len(failed)} publishes unconfirmed")
            await asyncio.sleep(0.05)           # a steady producer, not one burst
        except Exception:
            if conn is not None:
                try:
                    await asyncio.wait_for(conn.close(), 2)
                except Exception:
                    pass
            conn = None
            await asyncio.sleep(0.5)
    if conn is not None and not conn.is_closed:
        await conn.close()


def _broker_kills(kills, n, rabbit, vhost, sinks, start_mta, mta_config):
    for addr in SINK_ADDRESSES:
        sinks.set_data_delay(addr, 0.03)
    mta = start_mta(mta_config(broker={"prefetch": PREFETCH, "single_prefetch": SINGLE_PREFETCH},
                               default={"connection_limit": 5, "max_age": "600s"}))
    run = run_id()
    msgs = {f"bk-{run}-{i}": f"user{i}-{run}@{DOMAINS[i % len(DOMAINS)]}" for i in range(n)}
    ledger = Ledger(f"broker kill -9 x{kills} during {n}",
                    bound=kills * (PREFETCH + SINGLE_PREFETCH + BATCH))
    ledger.add(msgs)
    stats = {"confirmed": 0, "republished": 0}
    stop = threading.Event()
    producer = threading.Thread(target=lambda: asyncio.run(
        _produce(vhost, [make_message(i, r) for i, r in msgs.items()], stats, stop)))
    producer.start()
    try:
        for k in range(kills):
            target = sinks.accepted_count() + n // (kills + 2)
            assert sinks.wait_accepted(target, timeout=240), f"kill {k}: no progress"
            rabbit.kill9()
            time.sleep(5.0)
            rabbit.start()
        producer.join(300)
        assert not producer.is_alive(), f"the producer did not finish: {stats}"
        assert stats["confirmed"] == n, stats
        collector = ResultCollector(vhost)
        collector.collect(msgs, timeout=400, settle=2.0)
    finally:
        stop.set()
        producer.join(10)
    fig = ledger.check(collector.by_id, sinks.count_by_id())
    print(f"broker kills: producer republished {stats['republished']} unconfirmed")
    assert mta.alive(), f"{fig.line()}: the MTA did not ride out the broker's death"


@pytest.mark.timeout(600)
def test_broker_kill9_while_producing(rabbit, vhost, sinks, start_mta, mta_config):
    _broker_kills(1, 1000, rabbit, vhost, sinks, start_mta, mta_config)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_broker_kill9_while_producing_full(rabbit, vhost, sinks, start_mta, mta_config):
    _broker_kills(3, 5000, rabbit, vhost, sinks, start_mta, mta_config)
