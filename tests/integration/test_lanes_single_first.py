"""While bulk mail saturates 20 destinations at their limits, single-lane mail to the same
destinations is delivered at once: every single message arrives before the bulk backlog
is through, within a small fraction of the time that backlog takes."""

import time

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import assert_each_final, run_id

DOMAINS, BULK, SINGLE, RATE = 20, 8000, 100, 20


@pytest.mark.timeout(300)
def test_single_mail_does_not_wait_behind_bulk(vhost, sinks, mta_config, start_mta):
    start_mta(mta_config(default={"max_message_rate": f"{RATE}/s", "connection_limit": 3}))
    run = run_id()
    bulk = {f"bulk-{run}-{i}": f"b{i}-{run}@d{i % DOMAINS}.test" for i in range(BULK)}
    publish(vhost, "bulk", [make_message(i, r, tags=["newsletter"]) for i, r in bulk.items()])
    assert sinks.wait_accepted(DOMAINS * RATE, 60), "bulk did not start"

    single, sent_at = {}, {}
    for batch in range(10):  # password resets trickling in while bulk saturates
        ids = {f"single-{run}-{batch}-{d}": f"s{batch}-{d}-{run}@d{d}.test"
               for d in range(batch % 2, DOMAINS, 2)}
        publish(vhost, "single", [make_message(i, r) for i, r in ids.items()])
        now = time.time()
        sent_at.update({i: now for i in ids})
        single.update(ids)
        time.sleep(0.5)

    collector = ResultCollector(vhost)
    collector.collect(single, timeout=120, settle=0.2)
    assert_each_final(collector.by_id, single, "delivered")
    accepted = {a.msg_id: a.time for a in sinks.accepted()}
    latencies = sorted(accepted[i] - sent_at[i] for i in single)
    collector.collect(bulk, timeout=240, settle=0.2)
    assert_each_final(collector.by_id, bulk, "delivered")
    bulk_times = sorted(accepted_time for i, accepted_time in
                        ((a.msg_id, a.time) for a in sinks.accepted()) if i in bulk)
    bulk_span = bulk_times[-1] - bulk_times[0]

    assert max(accepted[i] for i in single) < bulk_times[-1], "single mail waited for the bulk backlog"
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    assert p99 < 0.1 * bulk_span, f"single p99 {p99:.2f}s against a bulk backlog of {bulk_span:.1f}s"
