"""Scenario 9 of the fault suite: SIGTERM in the middle of a run.

The MTA stops consuming, lets the transactions on the wire finish, settles them, gives back
what was queued and exits 0; a new process finishes the run. Ledger: nothing lost, nothing
sent twice, no second final result (bound 0).

CI: 2 SIGTERMs during 600 messages; slow: 10 SIGTERMs during 3,000 messages.
"""

from __future__ import annotations

import random
import signal

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import run_id
from tests.testbed.ledger import Ledger

DOMAINS = [f"ok{n}.test" for n in (1, 2, 3)] + [f"d{n}.test" for n in range(40, 50)]
SINK_ADDRESSES = ["127.0.1.1", "127.0.1.2", "127.0.1.3"] + [f"127.0.2.{n + 1}" for n in range(40, 50)]


def _sigterm_run(stops, n, vhost, sinks, start_mta, mta_config, seed):
    rng = random.Random(seed)
    for addr in SINK_ADDRESSES:
        sinks.set_data_delay(addr, 0.1)   # slow receivers: the stop lands mid-transaction
    # 13 destinations x 2 connections x 10/s: a few seconds per run, so every stop lands
    # before the last message, however quiet the machine
    cfg = mta_config(broker={"prefetch": 100}, default={"connection_limit": 2})
    mta = start_mta(cfg)
    run = run_id()
    msgs = {f"term-{run}-{i}": f"user{i}-{run}@{DOMAINS[i % len(DOMAINS)]}" for i in range(n)}
    ledger = Ledger(f"sigterm x{stops} {n}", bound=0)
    ledger.add(msgs)
    publish(vhost, "bulk", [make_message(i, r) for i, r in msgs.items()])
    for k in range(stops):
        target = sinks.accepted_count() + rng.randint(20, max(21, n // (stops + 1)))
        assert sinks.wait_accepted(target, timeout=120), f"stop {k}: no progress"
        mta.signal(signal.SIGTERM)
        code = mta.wait(timeout=90)
        assert code == 0, f"stop {k}: exit {code}\n{mta.log_tail()}"
        assert sinks.accepted_count() < n, "the run finished before the stop; slow the sinks down"
        mta = start_mta(cfg)
    collector = ResultCollector(vhost)
    collector.collect(msgs, timeout=240, settle=2.0)
    return ledger.check(collector.by_id, sinks.count_by_id())


@pytest.mark.timeout(300)
def test_sigterm_mid_run_loses_nothing_sends_nothing_twice(vhost, sinks, start_mta, mta_config):
    _sigterm_run(2, 600, vhost, sinks, start_mta, mta_config, seed=9)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_sigterm_mid_run_full(vhost, sinks, start_mta, mta_config):
    _sigterm_run(10, 3000, vhost, sinks, start_mta, mta_config, seed=10)
