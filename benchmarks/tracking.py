"""The event store at size (SPEC §9, issue: lookups by id or recipient in under a second over
10 million messages, SQLite and PostgreSQL): fills a store with N messages' events over 30
days through the tracker's own write path, then times `mta trace`'s lookups.

    .venv/bin/python benchmarks/tracking.py [--messages 10000000] [--postgresql]

Each message gets two events (accepted, then delivered, or a deferral for one in ten), its
recipient one of N/3 addresses (so a recipient has a few messages), a tag of 1,000. Reports the
fill rate, the size on disk, and for 200 random ids and recipients the median and slowest
lookup.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.cluster import machine  # noqa: E402
from mta.tracking.store import DAY, EventStore  # noqa: E402

START = 1_795_856_400.0  # 2026-11-28 09:00 UTC
BATCH = 5000


def rows_of(i: int, n: int) -> list[tuple]:
    t = START - 30 * DAY + (i / n) * 30 * DAY
    mid, rcpt = f"msg-{i:09d}", f"user{i % max(1, n // 3)}@domain{i % 5000}.example"
    tags = f"campaign-{i % 1000}"
    accepted = (t, mid, rcpt, "accepted", 0, 0, "bulk", None, None, None, None, None, None, tags, None, None)
    status = "deferred" if i % 10 == 0 else "delivered"
    done = (t + 1.5, mid, rcpt, status, 0 if status == "deferred" else 1, 1, "bulk", "message",
            f"mx{i % 50}.domain.example", "192.0.2.1", 250 if status == "delivered" else 451, None,
            "2.0.0 OK queued as ABC" if status == "delivered" else "4.7.1 try later", tags, None, None)
    return [accepted, done]


def timed(fn, keys) -> tuple[float, float]:
    took = []
    for k in keys:
        started = time.perf_counter()
        found = fn(k)
        took.append(time.perf_counter() - started)
        assert found, k
    return statistics.median(took), max(took)


async def fill_postgresql(url: str, n: int) -> float:
    from mta.tracking.shared import SharedEvents

    store = SharedEvents(url)
    started = time.perf_counter()
    batch: list[tuple] = []
    for i in range(n):
        batch.extend(rows_of(i, n))
        if len(batch) >= BATCH:
            await store.write(batch)
            batch = []
    if batch:
        await store.write(batch)
    await store.close()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=10_000_000)
    parser.add_argument("--postgresql", action="store_true", help="a private PostgreSQL instead of SQLite")
    args = parser.parse_args()
    n = args.messages
    server = None
    work = tempfile.mkdtemp(prefix="mta-tracking-")
    try:
        if args.postgresql:
            from mta.tracking.shared import SharedEventsSync
            from tests.testbed.postgres import PostgresServer

            server = PostgresServer()
            server.start()
            filled = asyncio.run(fill_postgresql(server.url, n))
            store = SharedEventsSync(server.url)
            size = "(in PostgreSQL)"
        else:
            store = EventStore(os.path.join(work, "events.sqlite"))
            started = time.perf_counter()
            batch: list[tuple] = []
            for i in range(n):
                batch.extend(rows_of(i, n))
                if len(batch) >= BATCH:
                    store.write(batch)
                    batch = []
            if batch:
                store.write(batch)
            filled = time.perf_counter() - started
            size = f"({os.path.getsize(store.path) / 2**20:,.0f} MB on disk)"
        rng = random.Random(3)
        ids = [f"msg-{rng.randrange(n):09d}" for _ in range(200)]
        recipients = [f"user{i % max(1, n // 3)}@domain{i % 5000}.example" for i in (rng.randrange(n) for _ in range(200))]
        by_id = timed(store.by_id, ids)
        by_recipient = timed(store.by_recipient, recipients)
        by_tag = timed(lambda t: store.by_tag(t, limit=20), [f"campaign-{rng.randrange(1000)}" for _ in range(20)])
        store.close()
        print(f"machine: {machine()}")
        print(f"{'PostgreSQL' if args.postgresql else 'SQLite'}: {n:,} messages, {2 * n:,} events over 30 days, "
              f"written in {filled:.0f}s ({2 * n / filled:,.0f} events/s through the tracker's write) {size}")
        for name, (median, worst) in (("by id", by_id), ("by recipient", by_recipient), ("by tag (20)", by_tag)):
            print(f"lookup {name}: median {median * 1000:.1f} ms, slowest {worst * 1000:.1f} ms")
    finally:
        if server is not None:
            server.remove()
        for name in os.listdir(work):
            os.unlink(os.path.join(work, name))
        os.rmdir(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
