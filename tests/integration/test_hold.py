"""More mail than a rate-limited destination can send soon is held in a delay queue and
acknowledged, not kept unacknowledged in memory: it comes back by itself, is delivered at
the configured rate, and holding counts no attempt."""

import pytest

from tests.testbed.amqp import collect_results, make_message, publish, queue_info
from tests.testbed.checks import assert_each_final, run_id

RATE = 2  # messages per second at ok1.test: 20 fit in memory (10 s), the rest is held


@pytest.mark.timeout(180)
def test_excess_is_held_then_delivered_at_the_rate(vhost, sinks, mta_config, start_mta):
    config = mta_config(domains={"ok1.test": {"max_message_rate": f"{RATE}/s", "connection_limit": 1}})
    start_mta(config)
    run = run_id()
    msgs = {f"hold-{run}-{i}": f"user{i}-{run}@ok1.test" for i in range(40)}
    publish(vhost, "bulk", [make_message(i, r) for i, r in msgs.items()])

    results = collect_results(vhost, msgs, timeout=120, settle=0.5)

    by_id = assert_each_final(results, msgs, "delivered")
    assert all(r["attempts"] == 1 for r in by_id.values()), "holding must not count attempts"
    assert all(len(results[i]) == 1 for i in msgs), "held mail publishes no result"
    assert queue_info(vhost, "mta.wait.bulk.15s") is not None, "nothing was held"
    counts = sinks.count_by_id()
    assert {i: counts.get(i) for i in msgs} == {i: 1 for i in msgs}
    times = sorted(a.time for a in sinks.accepted() if a.msg_id in msgs)
    burst = RATE  # the limiter lets one second's worth through back to back
    for start in times:
        in_window = sum(1 for t in times if start <= t < start + 1.0)
        assert in_window <= RATE + burst, f"{in_window} messages within 1 s of {start}"
    assert times[-1] - times[0] >= (len(times) - 2 * burst) / RATE
