"""Single-lane latency with the bulk lane idle and with bulk saturating every destination.

    .venv/bin/python benchmarks/lanes.py                 # 50,000 bulk, 400 single, ~2 min
    .venv/bin/python benchmarks/lanes.py --bulk 10000    # a shorter run

20 destinations (d0.test .. d19.test, each its own MX on the test bed's recording sinks),
each limited to 20 msg/s and 3 connections. First, with nothing else queued, single-lane
messages are published at 20/s for 10 s; then the bulk messages are published and, once
the sinks show every destination at its limit, single-lane messages to the same
destinations again at 20/s for 20 s. Latency = acceptance at the sink minus the publish
confirm at the producer. Printed: p50, p99 and max per phase, and the bulk throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import aio_pika  # noqa: E402

from benchmarks.shaping import Bed  # noqa: E402
from tests.testbed.amqp import collect_results, make_message, publish  # noqa: E402

DOMAINS, RATE, CONNECTIONS = 20, 20, 3


async def trickle(url: str, prefix: str, per_second: float, seconds: float) -> dict[str, float]:
    """Publish single-lane messages evenly; returns {id: time the broker confirmed it}."""
    sent: dict[str, float] = {}
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange("mta")
        start = time.time()
        n = int(per_second * seconds)
        for i in range(n):
            due = start + i / per_second
            await asyncio.sleep(max(0.0, due - time.time()))
            msg_id = f"{prefix}-{i}"
            body = make_message(msg_id, f"{prefix}{i}@d{i % DOMAINS}.test")
            await exchange.publish(aio_pika.Message(body, delivery_mode=2), routing_key="single")
            sent[msg_id] = time.time()
    return sent


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def latencies(bed: Bed, sent: dict[str, float]) -> list[float]:
    accepted = {a.msg_id: a.time for a in bed.sinks.accepted() if a.msg_id in sent}
    missing = set(sent) - set(accepted)
    if missing:
        raise SystemExit(f"{len(missing)} single messages were not delivered")
    return [accepted[i] - sent[i] for i in sent]


def report(name: str, values: list[float]) -> None:
    ms = [v * 1000 for v in values]
    print(f"| {name} | {len(ms)} | {percentile(ms, 0.5):.0f} ms | {percentile(ms, 0.99):.0f} ms | {max(ms):.0f} ms |",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bulk", type=int, default=50000)
    args = parser.parse_args()
    with Bed() as bed:
        url, mta = bed.scenario(default={"max_message_rate": f"{RATE}/s", "connection_limit": CONNECTIONS},
                                broker={"prefetch": 1000})
        try:
            idle = asyncio.run(trickle(url, "idle", 20, 10))
            collect_results(url, idle, timeout=60, settle=0.1)
            idle_lat = latencies(bed, idle)

            bulk = {f"bulk-{i}": f"b{i}@d{i % DOMAINS}.test" for i in range(args.bulk)}
            t0 = time.time()
            publish(url, "bulk", [make_message(i, r, tags=[f"campaign{n % 3}"])
                                  for n, (i, r) in enumerate(bulk.items())])
            published = time.time() - t0
            while bed.sinks.accepted_count() < len(idle) + DOMAINS * RATE * 2:
                time.sleep(0.1)  # bulk is flowing at the limits
            busy = asyncio.run(trickle(url, "busy", 20, 20))
            collect_results(url, busy, timeout=120, settle=0.1)
            busy_lat = latencies(bed, busy)
            still_queued = args.bulk - sum(1 for a in bed.sinks.accepted() if a.msg_id in bulk)
        finally:
            mta.terminate()
        print(f"\n{args.bulk} bulk published in {published:.1f} s; {still_queued} bulk still undelivered "
              f"when the last single message was delivered; limits {RATE}/s and {CONNECTIONS} connections "
              f"for each of {DOMAINS} destinations\n")
        print("| single lane | messages | p50 | p99 | max |")
        print("|---|---|---|---|---|")
        report("bulk idle", idle_lat)
        report("bulk saturating", busy_lat)


if __name__ == "__main__":
    main()
