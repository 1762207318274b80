"""Scenario 1 of the fault suite: kill -9 of the MTA at each stage of a message's path.

In-process hooks (MTA_FAULT, mta/fault.py) end the process with os._exit(137) the n-th
time it reaches a stage: after a delivery is consumed (before DNS), in DATA (354 read,
message not sent), after the final dot (reply not read), after the receiver's 250 (result
not published), after the result is confirmed (acknowledgement not sent). Each cycle
publishes a fresh batch, runs an MTA that dies at the stage, restarts a clean one, waits
for every final result, and stops it with SIGTERM. A further test kills the process from
outside at random moments.

The ledger (tests/testbed/ledger.py): every id exactly one final status, sink duplicates
and duplicate finals at most the prefetch window per crash (what was unacknowledged).

CI runs 5 stages x 2 cycles x 100 messages; the full run (20 cycles x 200 messages per
stage) is marked slow: ``bash scripts/test.sh -m slow tests/integration/test_fault_kill9_stages.py``.
"""

from __future__ import annotations

import random

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import run_id
from tests.testbed.ledger import Ledger

PREFETCH = 20
DOMAINS = [f"ok{n}.test" for n in (1, 2, 3)] + [f"d{n}.test" for n in range(30, 40)]
STAGES = ["consumed", "mid_data", "after_dot", "after_250", "after_result"]


def _batch(tag: str, n: int) -> dict:
    run = run_id()
    return {f"{tag}-{run}-{i}": f"user{i}-{run}@{DOMAINS[i % len(DOMAINS)]}" for i in range(n)}


def _stage_cycles(stage, cycles, n, vhost, sinks, start_mta, mta_config, seed):
    rng = random.Random(seed)
    cfg = mta_config(broker={"prefetch": PREFETCH, "single_prefetch": 10})
    ledger = Ledger(f"kill9@{stage} {cycles}x{n}", bound=cycles * PREFETCH)
    collector = ResultCollector(vhost)
    assert start_mta(cfg).terminate(timeout=60) == 0   # declares the topology, then stops
    for cycle in range(cycles):
        msgs = _batch(f"st-{stage}", n)
        ledger.add(msgs)
        publish(vhost, "bulk", [make_message(i, r, size=2048) for i, r in msgs.items()])
        # result batches are fewer than messages: die on an early one
        nth = rng.randint(1, 3) if stage == "after_result" else rng.randint(1, n // 4)
        doomed = start_mta(cfg, env={"MTA_FAULT": f"{stage}:{nth}"}, wait=False)
        code = doomed.wait(timeout=90)
        assert code == 137, f"cycle {cycle}: the MTA did not die at {stage}:{nth} (exit {code})"
        assert f"MTA_FAULT: exiting at {stage}" in doomed.log_text()
        clean = start_mta(cfg)
        collector.collect(msgs, timeout=120, settle=1.0)
        assert clean.terminate(timeout=60) == 0, f"cycle {cycle}: the clean MTA did not stop with 0"
    return ledger.check(collector.by_id, sinks.count_by_id())


@pytest.mark.timeout(300)
@pytest.mark.parametrize("stage", STAGES)
def test_kill9_at_stage(stage, vhost, sinks, start_mta, mta_config):
    _stage_cycles(stage, 2, 100, vhost, sinks, start_mta, mta_config, seed=stage)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("stage", STAGES)
def test_kill9_at_stage_full(stage, vhost, sinks, start_mta, mta_config):
    _stage_cycles(stage, 20, 200, vhost, sinks, start_mta, mta_config, seed=stage)


def _random_kills(cycles, n, vhost, sinks, start_mta, mta_config, seed):
    rng = random.Random(seed)
    for addr in ["127.0.1.1", "127.0.1.2", "127.0.1.3"] + [f"127.0.2.{k + 1}" for k in range(30, 40)]:
        sinks.set_data_delay(addr, 0.02)   # slow enough that a kill lands mid-run
    cfg = mta_config(broker={"prefetch": PREFETCH, "single_prefetch": 10})
    ledger = Ledger(f"kill9@random {cycles}x{n}", bound=cycles * PREFETCH)
    collector = ResultCollector(vhost)
    assert start_mta(cfg).terminate(timeout=60) == 0   # declares the topology, then stops
    for cycle in range(cycles):
        msgs = _batch("rk", n)
        ledger.add(msgs)
        before = sinks.accepted_count()
        publish(vhost, "bulk", [make_message(i, r, size=2048) for i, r in msgs.items()])
        mta = start_mta(cfg)
        target = before + rng.randint(1, n - 1)
        assert sinks.wait_accepted(target, timeout=60), f"cycle {cycle}: no progress"
        mta.kill9()
        clean = start_mta(cfg)
        collector.collect(msgs, timeout=120, settle=1.0)
        assert clean.terminate(timeout=60) == 0
    return ledger.check(collector.by_id, sinks.count_by_id())


@pytest.mark.timeout(300)
def test_kill9_at_random_moments(vhost, sinks, start_mta, mta_config):
    _random_kills(3, 100, vhost, sinks, start_mta, mta_config, seed=1)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_kill9_at_random_moments_full(vhost, sinks, start_mta, mta_config):
    _random_kills(20, 200, vhost, sinks, start_mta, mta_config, seed=2)
