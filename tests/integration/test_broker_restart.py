"""Restart the broker mid-run (clean stop + start, same data): the MTA recovers on its own
and every message is delivered."""

import time

import pytest

from tests.testbed.amqp import collect_results, make_message, publish
from tests.testbed.checks import finals, run_id, sink_duplicates

N = 1000
DOMAINS = [f"ok{n}.test" for n in (1, 2, 3)] + [f"d{n}.test" for n in range(10, 20)]
SINK_ADDRESSES = ["127.0.1.1", "127.0.1.2", "127.0.1.3"] + [f"127.0.2.{n + 1}" for n in range(10, 20)]


@pytest.mark.timeout(300)
def test_broker_restart_mid_run(rabbit, vhost, sinks, start_mta, mta_config):
    for addr in SINK_ADDRESSES:
        sinks.set_data_delay(addr, 0.05)
    mta = start_mta(mta_config(broker={"prefetch": 200}, default={"connection_limit": 5}))
    run = run_id()
    msgs = {f"br-{run}-{i}": f"user{i}-{run}@{DOMAINS[i % len(DOMAINS)]}" for i in range(N)}
    publish(vhost, "bulk", [make_message(i, r) for i, r in msgs.items()])

    assert sinks.wait_accepted(50, timeout=60), "nothing delivered before the restart"
    at_restart = sinks.accepted_count()
    rabbit.restart()
    assert mta.alive(), "the MTA must ride out a broker restart"

    results = collect_results(vhost, msgs, timeout=200, settle=2.0)

    missing = [i for i in msgs if not any(r["status"] == "delivered" for r in finals(results, i))]
    assert not missing, f"{len(missing)} ids without a delivered result, e.g. {missing[:5]}"
    assert mta.alive(), "the MTA recovered by itself, without a restart"
    counts = sinks.count_by_id()
    print(f"broker restart: accepted before restart {at_restart}/{N}; "
          f"sink duplicates {sink_duplicates(counts, msgs)}")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_broker_kill9_mid_run(rabbit, vhost, sinks, start_mta, mta_config):
    """The broker dies hard (kill -9) and comes back on the same data: confirmed
    messages survive and the MTA reconnects by itself."""
    for addr in SINK_ADDRESSES:
        sinks.set_data_delay(addr, 0.05)
    mta = start_mta(mta_config(broker={"prefetch": 200}, default={"connection_limit": 5}))
    run = run_id()
    msgs = {f"bk-{run}-{i}": f"user{i}-{run}@{DOMAINS[i % len(DOMAINS)]}" for i in range(N)}
    publish(vhost, "bulk", [make_message(i, r) for i, r in msgs.items()])
    assert sinks.wait_accepted(50, timeout=60)
    rabbit.kill9()
    time.sleep(2.0)
    rabbit.start()
    results = collect_results(vhost, msgs, timeout=300, settle=2.0)
    missing = [i for i in msgs if not any(r["status"] == "delivered" for r in finals(results, i))]
    assert not missing, f"{len(missing)} ids without a delivered result, e.g. {missing[:5]}"
    assert mta.alive()
    print(f"broker kill9: sink duplicates {sink_duplicates(sinks.count_by_id(), msgs)}")
