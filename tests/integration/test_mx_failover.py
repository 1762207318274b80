"""MX 10 is dead (nothing listens), MX 20 works: delivered through 127.0.1.5."""

import pytest

from tests.testbed.amqp import collect_results, make_message, publish
from tests.testbed.checks import assert_each_final, run_id


@pytest.mark.timeout(120)
def test_mx_failover(vhost, sinks, start_mta):
    start_mta()
    run = run_id()
    msgs = {f"fo-{run}-{i}": f"user{i}-{run}@failover.test" for i in range(5)}
    publish(vhost, "bulk", [make_message(i, r) for i, r in msgs.items()])

    results = collect_results(vhost, msgs, timeout=60, settle=1.0)

    by_id = assert_each_final(results, msgs, "delivered")
    for res in by_id.values():
        last = res["results"][-1]
        assert last["code"] == 250
        assert last.get("ip") in (None, "127.0.1.5"), last
        assert last.get("mx") in (None, "mx2.failover.test", "mx2.failover.test."), last
    counts = sinks.count_by_id()
    assert {i: counts.get(i) for i in msgs} == {i: 1 for i in msgs}
    assert {a.sink for a in sinks.accepted() if a.msg_id in msgs} == {"127.0.1.5"}
