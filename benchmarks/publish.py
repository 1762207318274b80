"""Micro-benchmark: CPU per publish of mta.broker.publish.BatchPublisher (marshalling, delivery
tags, confirmation slots), against an in-memory channel that confirms each batch at once.

    .venv/bin/python -m benchmarks.publish [rounds]

Prints µs per publish for batches like the settler's: results (1 KB JSON, no headers) and
retry copies (1 KB body, the four x-mta-* headers); and µs per message for the settler's
whole write of a batch (results built, encoded, published, acknowledged) of delivered and
deferred messages."""

from __future__ import annotations

import asyncio
import sys
import time

from mta.intake.message import decode
from mta.broker.publish import BatchPublisher, Publish
from mta.settle.acks import AckBook
from mta.settle.results import attempt_entry
from mta.settle.settler import Settler
from tests.fakes import FakeConsumeChannel, FakePublishChannel

BATCH = 100


def batches():
    body = b'{"id":"m","recipient":"user@example.com","status":"delivered"' + b" " * 900 + b"}"
    history = '[{"time":"2026-11-30T12:00:00.000Z","phase":"rcpt","code":451,"enhanced":"4.3.0",' \
              '"description":"4.3.0 try again later","mx":"mx.example.com","ip":"192.0.2.1","lane":"bulk"}]'
    results = [Publish("mta.results", "delivered", body) for _ in range(BATCH)]
    retries = [Publish("", "mta.delay.bulk.60s", body, {"x-mta-id": f"m{i}", "x-mta-attempts": 1,
                                                        "x-mta-first": 1_795_000_000_000, "x-mta-results": history})
               for i in range(BATCH)]
    return {"results": results, "retry copies": retries}


async def run(rounds: int) -> None:
    channel = FakePublishChannel(record=False)
    publisher = BatchPublisher(channel)
    for name, batch in batches().items():
        for _ in range(rounds // 10):  # warm up
            await publisher.publish(batch, 30)
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(rounds):
                outcomes = await publisher.publish(batch, 30)
            best = min(best, time.perf_counter() - started)
            assert outcomes == [None] * BATCH
        print(f"{name:13s} {best / (rounds * BATCH) * 1e6:6.2f} µs per publish (best of 5, {rounds} batches of {BATCH})")


class _Session:
    def __init__(self, channel):
        self.channel = channel


class _Topology:
    async def ensure_delay(self, channel, lane: str, seconds: int) -> str:
        return f"mta.delay.{lane}.{seconds}s"


def _job(n: int):
    body = (b'{"id":"m%d","recipient":"user%d@example.com","envelope":"b@sender.example","tags":["t"],'
            b'"mime":"From: a@sender.example\\nSubject: hi\\n\\n' % (n, n) + b"x" * 800 + b'"}')
    job = decode(body, {}, "bulk", 1_800_000_000.0)
    job.attempts = 1
    job.history.append(attempt_entry(1_800_000_000.0, "message", 250, "2.0.0", "2.0.0 OK queued as 1234",
                                     "mx.example.com", "192.0.2.1", "bulk"))
    return job


async def run_settler(rounds: int) -> None:
    channel = FakePublishChannel(record=False)
    settler = Settler(_Session(channel), _Topology(), publish_timeout=30)
    consuming = FakeConsumeChannel()
    book = AckBook(consuming)
    jobs = [_job(n) for n in range(BATCH)]
    for name, settle in (("delivered", lambda job, tag: settler.final(job, book, tag, "delivered")),
                         ("deferred", lambda job, tag: settler.defer(job, book, tag, 60))):
        best = float("inf")
        tag = 0
        for attempt in range(6):
            started = time.perf_counter()
            for _ in range(rounds):
                for job in jobs:
                    tag += 1
                    book.received(tag)
                    settle(job, tag)
                batch, settler._pending = settler._pending, []
                await settler._write(batch)
            if attempt:  # the first warms up
                best = min(best, time.perf_counter() - started)
            settler.recent.clear()
        print(f"settler {name:9s} {best / (rounds * BATCH) * 1e6:6.2f} µs per message (best of 5, {rounds} batches of {BATCH})")
    assert not consuming.requeued, "nothing should be given back"


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    asyncio.run(run(rounds))
    asyncio.run(run_settler(rounds))
