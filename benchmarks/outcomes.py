"""Micro-benchmark: CPU per outcome of mta.settle.outcomes.Outcomes.finish (the attempt in
the history, the disposition, the counts and metrics), for a delivered and a deferred
message; the settler is a stub that takes the outcome and does nothing with it.

    .venv/bin/python -m benchmarks.outcomes [rounds]

Prints µs per outcome, best of 5 runs."""

from __future__ import annotations

import sys
import time
from collections import Counter

from mta.config import parse_config
from mta.intake.message import decode
from mta.ops.metrics import Metrics
from mta.routing.rules import Rules
from mta.settle.outcomes import Outcomes
from mta.smtp.client import Reply

BATCH = 100


class _Settler:
    def final(self, job, book, tag, status, kind=None) -> None:
        pass

    def defer(self, job, book, tag, delay) -> None:
        pass


def _jobs(rules: Rules) -> list:
    jobs = []
    for n in range(BATCH):
        body = (b'{"id":"m%d","recipient":"user%d@d%d.example","envelope":"b@sender.example","tags":["t"],'
                b'"mime":"From: a@sender.example\\nSubject: hi\\n\\n' % (n, n, n % 10) + b"x" * 800 + b'"}')
        job = decode(body, {}, "bulk", 1_800_000_000.0)
        job.delivery = (None, n)
        job.destination = rules.resolve(job.domain, None)
        jobs.append(job)
    return jobs


def run(rounds: int) -> None:
    config = parse_config({"broker": {"url": "amqp://guest:guest@localhost/"}})
    rules = Rules(config)
    outcomes = Outcomes(lambda: 1_800_000_100.0, Counter(), Metrics(None), {}, rules, config.default)
    outcomes.settler = _Settler()
    jobs = _jobs(rules)
    replies = {"delivered": Reply(250, "2.0.0 OK queued as 1234", "message"),
               "deferred": Reply(451, "4.7.1 try again later", "message")}
    for name, reply in replies.items():
        best = float("inf")
        for attempt in range(6):
            for job in jobs:
                job.history.clear()
                job.attempts = 0
            started = time.process_time()
            for _ in range(rounds):
                for job in jobs:
                    outcomes.done(job, reply, "mx.example", "192.0.2.1", None)
                for job in jobs:
                    job.history.clear()
                    job.attempts = 0
            if attempt:  # the first warms up
                best = min(best, time.process_time() - started)
        print(f"outcome {name:9s} {best / (rounds * BATCH) * 1e6:6.2f} µs per outcome "
              f"(best of 5, {rounds * BATCH} outcomes each, the history reset included)")


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
