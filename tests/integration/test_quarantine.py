"""Poison messages: a message rejected with requeue more than `broker.delivery_limit` times
is dead-lettered by the quorum lane into `mta.quarantine`; `mta replay-quarantined` puts it back
on its lane, and the MTA then delivers it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import aio_pika
import pytest

from tests.testbed.amqp import (ResultCollector, drain_queue, make_message, publish,
                                queue_info)
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.mtaproc import REPO_ROOT
from tests.testbed.util import wait_for

DELIVERY_LIMIT = 2
QUARANTINE = "mta.quarantine"
BULK = "mta.bulk"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _reject_until_dead_lettered(url: str, queue_name: str, timeout: float = 20.0,
                                      quiet: float = 2.0) -> int:
    """Consume ``queue_name`` and nack(requeue=True) every delivery until none arrives for
    ``quiet`` s (the broker dead-lettered it); returns how many deliveries were rejected."""
    conn = await asyncio.wait_for(aio_pika.connect(url), 30)
    rejected = 0
    try:
        channel = await conn.channel()
        await channel.set_qos(prefetch_count=1)
        queue = await channel.get_queue(queue_name, ensure=True)
        inbox: asyncio.Queue = asyncio.Queue()

        async def on_message(message) -> None:
            await inbox.put(message)

        tag = await queue.consume(on_message, no_ack=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = await asyncio.wait_for(inbox.get(), quiet)
            except asyncio.TimeoutError:
                if rejected:
                    break
                continue
            await message.nack(requeue=True)
            rejected += 1
        await queue.cancel(tag)
    finally:
        await conn.close()
    return rejected


def _replay_quarantined(config: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "mta", "replay-quarantined", config],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(120)
def test_poison_message_quarantined_and_replayed(vhost, sinks, mta_config, start_mta):
    cfg = mta_config(broker={"delivery_limit": DELIVERY_LIMIT, "queue_type": "quorum"})

    # one start declares the topology (lanes with x-delivery-limit -> mta.quarantine)
    first = start_mta(cfg)
    first.wait_ready(vhost, queue=QUARANTINE)
    assert first.terminate(timeout=20) == 0, first.log_tail()
    assert queue_info(vhost, QUARANTINE) == {"messages": 0, "consumers": 0}
    assert queue_info(vhost, BULK) == {"messages": 0, "consumers": 0}

    run = run_id()
    msg_id = f"poison-{run}"
    recipient = f"user-{run}@ok1.test"
    body = make_message(msg_id, recipient)
    publish(vhost, "bulk", [body])

    # a "crashing" consumer: every delivery goes back with requeue until the broker gives up
    rejected = asyncio.run(_reject_until_dead_lettered(vhost, BULK))
    assert 1 <= rejected <= DELIVERY_LIMIT + 2, rejected

    wait_for(lambda: (queue_info(vhost, QUARANTINE) or {}).get("messages") == 1, timeout=15,
             what="the poison message in mta.quarantine")
    assert queue_info(vhost, BULK)["messages"] == 0

    # look at it without taking it away (closing the connection returns it)
    parked = drain_queue(vhost, QUARANTINE, expect=1, timeout=10, ack=False)
    assert len(parked) == 1
    assert parked[0].body == body, "dead-lettering keeps the body unchanged"
    deaths = parked[0].headers.get("x-death")
    assert deaths, f"no x-death header: {parked[0].headers}"
    assert any(_text(d.get("queue")) == BULK for d in deaths), deaths
    print(f"quarantine: {rejected} rejected deliveries; x-death "
          f"{[(_text(d.get('queue')), _text(d.get('reason'))) for d in deaths]}")
    wait_for(lambda: (queue_info(vhost, QUARANTINE) or {}).get("messages") == 1, timeout=10,
             what="the poison message back in mta.quarantine after peeking")

    # the operator fixed the cause: put it back on its lane
    proc = _replay_quarantined(cfg)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "moved 1" in proc.stdout, proc.stdout
    wait_for(lambda: (queue_info(vhost, QUARANTINE) or {}).get("messages") == 0, timeout=10,
             what="mta.quarantine empty after replay")
    wait_for(lambda: (queue_info(vhost, BULK) or {}).get("messages") == 1, timeout=10,
             what="the message back on mta.bulk")

    # and the MTA now delivers it, once
    start_mta(cfg)
    results = ResultCollector(vhost).collect([msg_id], timeout=45, settle=1.0)
    final = assert_each_final(results, [msg_id], "delivered")[msg_id]
    assert final["recipient"] == recipient
    assert sinks.count_by_id().get(msg_id) == 1, sinks.count_by_id()
    assert queue_info(vhost, QUARANTINE)["messages"] == 0
