"""Scenario 9 of the fault suite: SIGTERM in the middle of a run.

The MTA stops consuming, lets the transactions on the wire finish, settles them, gives back
what was queued and exits 0; a new process finishes the run. Ledger: nothing lost, nothing
sent twice, no second final result (bound 0).

CI: 2 SIGTERMs during 600 messages; slow: 10 SIGTERMs during 3,000 messages.
"""

from __future__ import annotations

import random
import signal
import time

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


PACED = "d50.test"     # 6 messages a minute: the second waits ~10 s in its worker for its turn
ON_WIRE = "d51.test"   # the receiver answers the message after 30 s


@pytest.mark.timeout(180)
def test_sigterm_grace_limit_gives_back_what_never_reached_the_wire(vhost, sinks, start_mta, mta_config):
    """SIGTERM with a 2 s grace: the transaction on the wire is cut off and counts as an
    interrupted attempt; the message waiting in a worker for its rate slot never reached the
    wire and goes back to the broker as it came: no attempt, no result, delivered later as
    if the stop had not happened."""
    sinks.set_data_delay("127.0.2.52", 30.0)
    cfg = mta_config(smtp={"shutdown_grace": "2s"}, default={"retry_intervals": ["1s"], "max_age": "120s"},
                     domains={PACED: {"max_message_rate": "6/min", "connection_limit": 1}})
    mta = start_mta(cfg)
    run = run_id()
    paced = {f"gp-{run}-{i}": f"user{i}-{run}@{PACED}" for i in range(2)}
    wire = {f"gw-{run}": f"user-{run}@{ON_WIRE}"}
    publish(vhost, "bulk", [make_message(i, r) for i, r in {**paced, **wire}.items()])
    assert sinks.wait_accepted(1, timeout=30), "the first paced message was not delivered"
    time.sleep(1.0)  # the second one waits for its slot; the slow one is in DATA
    mta.signal(signal.SIGTERM)
    assert mta.wait(timeout=30) == 0, mta.log_tail()
    sinks.set_data_delay("127.0.2.52", None)
    start_mta(cfg)
    collector = ResultCollector(vhost)
    collector.collect({**paced, **wire}, timeout=120, settle=1.0)
    second = list(paced)[1]
    results = collector.by_id[second]
    assert [r["status"] for r in results] == ["delivered"], results
    assert results[0]["attempts"] == 1, results[0]["results"]
    slow = collector.by_id[list(wire)[0]]
    assert [r["status"] for r in slow] == ["deferred", "delivered"], slow
    assert "interrupted" in slow[0]["results"][-1]["description"]
