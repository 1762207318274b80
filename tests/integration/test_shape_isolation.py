"""5,000 bulk messages stuck behind a 5/s destination do not delay 500 messages to another
domain: that domain's mail goes out as fast as it does alone (within 10 %)."""

import random

import pytest

from tests.testbed.amqp import collect_results, make_message, publish
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.dns import OK_MX

FAST_RATE, FAST_N, SLOW_N = 50, 500, 5000


def delivery_time(sinks, sink, ids):
    times = sorted(a.time for a in sinks.accepted() if a.sink == sink and a.msg_id in ids)
    assert len(times) == len(ids)
    return times[-1] - times[0]


@pytest.mark.timeout(300)
def test_a_slow_destination_does_not_hold_up_another(vhost, sinks, mta_config, start_mta):
    start_mta(mta_config(domains={"ok1.test": {"max_message_rate": "5/s", "connection_limit": 2},
                                  "ok2.test": {"max_message_rate": f"{FAST_RATE}/s"}}))
    run = run_id()
    alone = {f"alone-{run}-{i}": f"user{i}-{run}@ok2.test" for i in range(FAST_N)}
    publish(vhost, "bulk", [make_message(i, r) for i, r in alone.items()])
    assert_each_final(collect_results(vhost, alone, timeout=120, settle=0.2), alone, "delivered")
    baseline = delivery_time(sinks, OK_MX[2], set(alone))

    slow = {f"slow-{run}-{i}": f"s{i}-{run}@ok1.test" for i in range(SLOW_N)}
    fast = {f"fast-{run}-{i}": f"f{i}-{run}@ok2.test" for i in range(FAST_N)}
    bodies = [make_message(i, r) for i, r in slow.items()]
    for i, r in fast.items():  # the fast domain's mail arrives spread among the slow one's
        bodies.insert(random.randrange(len(bodies) + 1), make_message(i, r))
    publish(vhost, "bulk", bodies)
    assert_each_final(collect_results(vhost, fast, timeout=120, settle=0.2), fast, "delivered")
    crowded = delivery_time(sinks, OK_MX[2], set(fast))

    assert crowded <= baseline * 1.10, f"alone {baseline:.2f}s, behind the slow backlog {crowded:.2f}s"
