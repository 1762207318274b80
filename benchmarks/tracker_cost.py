"""The tracker's CPU per message, without a broker: what `tracking.enabled` adds to a run.

    .venv/bin/python benchmarks/tracker_cost.py [--messages 50000] [--batch 1000]

Two sides, each timed with the CPU clock of this process, on real jobs (`mta.intake`):
- **engine**: what the engine's process does per message: `Tracker.accepted` when a message
  is consumed, `Tracker.settled` when its result is published (the result's JSON, which the
  engine encodes for mta.results anyway, is made before the clock starts), and the batch's
  encoding for the pipe to the writer (every `--batch` messages, about a quarter second at
  full speed);
- **writer**: what the writer process does with those batches: decode, build the rows from
  the results, insert into SQLite (WAL), the pending table.

Run for messages that finish within a second of being accepted (one row each, the common
case at full speed) and for messages that take longer (two rows each, and the pending table
once they are 30 s old). The e2e benchmark's whole-machine CPU per message (MTA, broker,
sinks) divides these into the share of the machine the tracker takes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from types import SimpleNamespace

import orjson

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.cluster import machine  # noqa: E402
from mta.config import Tracking  # noqa: E402
from mta.intake.message import decode  # noqa: E402
from mta.settle.results import dumps, result_doc  # noqa: E402
from mta.tracking.store import EventStore  # noqa: E402
from mta.tracking.tracker import Tracker  # noqa: E402
from mta.tracking import child  # noqa: E402

START = 1_795_856_400.0


class Encoding:
    """The writer's parent side without the pipe: the batches, encoded as WriterProcess does."""

    path = "memory"

    def __init__(self):
        self.batches: list[bytes] = []

    async def start(self) -> None:
        pass

    async def write(self, rows, pending=None) -> None:
        self.batches.append(child.encode(rows, pending))

    async def close(self) -> None:
        pass


def jobs(n: int) -> list:
    out = []
    for i in range(n):
        body = orjson.dumps({"id": f"msg-{i:09d}", "recipient": f"user{i}@domain{i % 100}.example",
                             "envelope": "bounces@sender.example", "mime": "Subject: x\r\n\r\nhello\r\n"})
        job = decode(body, {}, "bulk", START)
        job.history = [{"phase": "data", "code": 250, "enhanced": "2.0.0", "description": "250 2.0.0 Ok: queued",
                        "mx": f"mx.domain{i % 100}.example", "ip": "127.0.2.1", "tls": False}]
        out.append((job, dumps(result_doc(job, "delivered"))))
    return out


def engine_side(all_jobs: list, batch: int, takes: float) -> tuple[float, list[bytes]]:
    """CPU seconds per message of the tracker's calls, each message finished `takes` seconds
    after it was accepted (messages accepted `batch` at a time, a quarter second apart)."""
    now = [START]
    clock = SimpleNamespace(wall=lambda: now[0], sleep=asyncio.sleep)
    tracker = Tracker(Tracking(), "file:unused?mode=memory&cache=shared", clock)
    tracker.writer = encoding = Encoding()
    lag = max(1, round(takes / 0.25))  # batches between a message's accept and its result

    async def run() -> float:
        t = time.process_time()
        groups = [all_jobs[i:i + batch] for i in range(0, len(all_jobs), batch)]
        for k in range(len(groups) + lag):
            if k < len(groups):
                for job, _ in groups[k]:
                    tracker.accepted(job)
            if k >= lag:
                for job, result in groups[k - lag]:
                    tracker.settled(job, "delivered", None, result)
            now[0] += 0.25
            await tracker.flush()
        return time.process_time() - t

    cpu = asyncio.run(run())
    return cpu / len(all_jobs), encoding.batches


def writer_side(batches: list[bytes], n: int) -> float:
    with tempfile.TemporaryDirectory() as work:
        store = EventStore(os.path.join(work, "events.sqlite"))
        t = time.process_time()
        for data in batches:
            store.write(*child.decode(data))
        cpu = time.process_time() - t
        store.close()
    return cpu / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=50000)
    ap.add_argument("--batch", type=int, default=1000, help="messages accepted per quarter second")
    ap.add_argument("--machine-us", type=float, help="e2e's whole-machine CPU per message, for the share")
    args = ap.parse_args()
    print(machine())
    all_jobs = jobs(args.messages)
    for takes, label in ((0.5, "finished within a second (one row)"), (2.0, "finished after 2 s (two rows)")):
        engine, batches = engine_side(all_jobs, args.batch, takes)
        writer = writer_side(batches, args.messages)
        share = f"; {100 * (engine + writer) * 1e6 / args.machine_us:.1f} % of {args.machine_us:.0f} us" \
            if args.machine_us else ""
        print(f"{label}: engine {engine * 1e6:.1f} us + writer {writer * 1e6:.1f} us = "
              f"{(engine + writer) * 1e6:.1f} us per message{share}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
