"""kill -9 the MTA mid-run, restart it: every message delivered; duplicates bounded by the
prefetch (what was unacknowledged when the process died)."""

import time

import pytest

from tests.testbed.amqp import collect_results, make_message, publish
from tests.testbed.checks import assert_each_final, finals, run_id, sink_duplicates

N = 2000
PREFETCH = 200
DOMAINS = [f"ok{n}.test" for n in (1, 2, 3)] + [f"d{n}.test" for n in range(10)]
SINK_ADDRESSES = ["127.0.1.1", "127.0.1.2", "127.0.1.3"] + [f"127.0.2.{n + 1}" for n in range(10)]


@pytest.mark.timeout(300)
def test_kill9_mid_run(vhost, sinks, start_mta, mta_config):
    # slow receivers so the run is still going when the process dies
    for addr in SINK_ADDRESSES:
        sinks.set_data_delay(addr, 0.05)
    cfg = mta_config(broker={"prefetch": PREFETCH}, default={"connection_limit": 5})
    first = start_mta(cfg)
    run = run_id()
    msgs = {f"k9-{run}-{i}": f"user{i}-{run}@{DOMAINS[i % len(DOMAINS)]}" for i in range(N)}
    publish(vhost, "bulk", [make_message(i, r, size=1024) for i, r in msgs.items()])

    assert sinks.wait_accepted(100, timeout=60), "nothing delivered before the kill"
    first.kill9()
    at_kill = sinks.accepted_count()
    assert at_kill < N, "the run finished before the kill; slow the sinks down"

    start_mta(cfg)
    results = collect_results(vhost, msgs, timeout=180, settle=2.0)

    missing = [i for i in msgs if not any(r["status"] == "delivered" for r in finals(results, i))]
    assert not missing, f"{len(missing)} ids without a delivered result, e.g. {missing[:5]}"
    other = [i for i in msgs if any(r["status"] != "delivered" for r in finals(results, i))]
    assert not other, [results[i] for i in other[:3]]

    counts = sinks.count_by_id()
    assert all(counts.get(i, 0) >= 1 for i in msgs)
    dups = sink_duplicates(counts, msgs)
    final_dups = sum(len(finals(results, i)) - 1 for i in msgs)
    print(f"kill9: accepted at kill {at_kill}/{N}; sink duplicates {dups}; "
          f"duplicate final results {final_dups}")
    assert dups <= PREFETCH, f"{dups} duplicate deliveries > prefetch {PREFETCH}"
    assert final_dups <= PREFETCH


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kill9_repeatedly(vhost, sinks, start_mta, mta_config):
    """Five kill -9 / restart cycles during one 5,000-message run."""
    n, cycles = 5000, 5
    for addr in SINK_ADDRESSES:
        sinks.set_data_delay(addr, 0.05)
    cfg = mta_config(broker={"prefetch": PREFETCH}, default={"connection_limit": 5})
    mta = start_mta(cfg)
    run = run_id()
    msgs = {f"k9r-{run}-{i}": f"user{i}-{run}@{DOMAINS[i % len(DOMAINS)]}" for i in range(n)}
    publish(vhost, "bulk", [make_message(i, r) for i, r in msgs.items()])
    for c in range(cycles):
        target = sinks.accepted_count() + 300
        assert sinks.wait_accepted(target, timeout=120), f"cycle {c}: no progress"
        mta.kill9()
        time.sleep(0.5)
        mta = start_mta(cfg)
    results = collect_results(vhost, msgs, timeout=300, settle=2.0)
    missing = [i for i in msgs if not any(r["status"] == "delivered" for r in finals(results, i))]
    assert not missing, f"{len(missing)} ids without a delivered result, e.g. {missing[:5]}"
    dups = sink_duplicates(sinks.count_by_id(), msgs)
    print(f"kill9 x{cycles}: sink duplicates {dups}")
    assert dups <= cycles * PREFETCH
