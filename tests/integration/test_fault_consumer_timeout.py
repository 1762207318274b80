"""Scenario 3 of the fault suite: the broker's consumer acknowledgement timeout shortened
while one destination is throttled to 1 message a minute.

The MTA must park what the destination cannot take soon (delay queues) instead of holding
it unacknowledged: no channel is closed by the broker, nothing is sent twice. A control
consumer that does hold a delivery unacknowledged in the same vhost shows the timeout is
in force. At 1/min the run cannot end in a test's time: after watching it past the
broker's timeout checks, the MTA is stopped and its parked mail read back from the broker;
the ledger counts each id as a final result or a parked copy, never both, never neither.

CI: timeout 20 s, 200 messages watched 75 s; slow: timeout 60 s, 500 messages, 200 s.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import aio_pika
import pytest

from tests.testbed.amqp import RESULTS_QUEUE, ResultCollector, drain_queue, make_message, publish
from tests.testbed.checks import run_id
from tests.testbed.ledger import Ledger

DOMAIN = "d70.test"


async def _held_past_timeout(url: str, limit: float) -> float | None:
    """Hold one delivery unacknowledged; seconds until the broker closed the channel, or
    None if it did not within ``limit``."""
    conn = await aio_pika.connect(url)
    try:
        ch = await conn.channel()
        q = await ch.declare_queue("fault.timeout-probe", auto_delete=True)
        await ch.default_exchange.publish(aio_pika.Message(b"probe"), routing_key=q.name)
        closed = asyncio.Event()
        ch.close_callbacks.add(lambda *_: closed.set())
        t0 = time.monotonic()
        async def hold(msg):      # never acknowledged
            pass
        await q.consume(hold, no_ack=False)
        try:
            await asyncio.wait_for(closed.wait(), limit)
        except asyncio.TimeoutError:
            return None
        return time.monotonic() - t0
    finally:
        await conn.close()


def _set_consumer_timeout(rabbit, ms):
    rabbit.ctl("eval", f"application:set_env(rabbit, consumer_timeout, {ms}).")


def _throttled_run(timeout_s, n, observe, rabbit, vhost, sinks, start_mta, mta_config):
    before = rabbit.ctl("eval", "application:get_env(rabbit, consumer_timeout).").stdout.strip()
    _set_consumer_timeout(rabbit, timeout_s * 1000)
    try:
        cfg = mta_config(domains={DOMAIN: {"max_message_rate": "1/min", "connection_limit": 1,
                                           "max_age": "3600s"}})
        mta = start_mta(cfg)
        probe: dict = {}
        t = threading.Thread(target=lambda: probe.update(
            closed=asyncio.run(_held_past_timeout(vhost, timeout_s + 75))))
        t.start()
        run = run_id()
        msgs = {f"ct-{run}-{i}": f"user{i}-{run}@{DOMAIN}" for i in range(n)}
        ledger = Ledger(f"consumer timeout {timeout_s}s, 1/min, {n} messages, {observe}s",
                        bound=0)
        ledger.add(msgs, status="delivered")
        publish(vhost, "bulk", [make_message(i, r) for i, r in msgs.items()])
        collector = ResultCollector(vhost)
        # at 1/min the run cannot finish: watch it past the broker's timeout check, stop
        # the MTA, and read back what it left parked at the broker
        collector.collect((), timeout=observe, settle=0, until=lambda c: False)
        t.join(timeout_s + 90)
        code = mta.terminate(timeout=90)
        collector.collect((), timeout=3, settle=0, until=lambda c: False)
        parked = set()
        for queue in rabbit.queues(vhost):
            if queue.startswith("mta.") and queue != RESULTS_QUEUE:
                for m in drain_queue(vhost, queue, timeout=30, idle=1.0):
                    try:
                        parked.add(json.loads(m.body)["id"])
                    except (ValueError, KeyError, TypeError):
                        pass
        fig = ledger.check(collector.by_id, sinks.count_by_id(), sink_duplicates_allowed=0,
                           in_broker=parked)
        assert code == 0, f"{fig.line()}: the MTA exited {code}"
        assert probe.get("closed") is not None, \
            f"control: the broker did not enforce a {timeout_s}s consumer timeout"
        print(f"consumer timeout control: channel closed after {probe['closed']:.0f}s")
        assert 1 <= fig.statuses.get("delivered", 0) <= observe // 60 + 2, fig.line()
        log = mta.log_text()
        closures = log.count("lost the broker") + log.count("session at")
        assert closures == 0, (f"{fig.line()}: the broker closed the MTA's channel {closures} "
                               f"times: {mta.log_tail()}")
    finally:
        if before.startswith("{ok,"):
            rabbit.ctl("eval", f"application:set_env(rabbit, consumer_timeout, {before[4:-1]}).")
        else:
            rabbit.ctl("eval", "application:unset_env(rabbit, consumer_timeout).")


# A slow destination takes a message into memory only when its rate slot is at most
# shaper.allowance.MAX_WAIT (15 s) away, also when a connection worker is idle and would take
# it at once; the rest waits in delay queues, acknowledged. RabbitMQ checks the timeout once a
# minute per channel, so the CI variant watches past the first check.
@pytest.mark.timeout(300)
def test_short_consumer_timeout_with_a_throttled_destination(rabbit, vhost, sinks, start_mta,
                                                             mta_config):
    _throttled_run(20, 200, 75, rabbit, vhost, sinks, start_mta, mta_config)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_short_consumer_timeout_full(rabbit, vhost, sinks, start_mta, mta_config):
    _throttled_run(60, 500, 200, rabbit, vhost, sinks, start_mta, mta_config)
