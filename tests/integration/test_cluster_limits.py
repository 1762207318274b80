"""Several MTA processes on one broker and one store behave as one MTA (SPEC §6): the
receiver never sees more than `connection_limit` sessions of the destination at once, nor
more than `max_message_rate` (within the tolerance of one process), however many nodes
send; without the store each would apply every limit in full."""

import pytest

from tests.testbed.amqp import collect_results, make_message, publish
from tests.testbed.checks import assert_each_final, most_in_window, run_id
from tests.testbed.dns import OK_MX


def _nodes(mta_config, start_mta, redis_url, n: int, **overrides) -> list:
    return [start_mta(mta_config(name=f"node{i}.yaml", cluster={"store": redis_url, "node": f"n{i}"},
                                 **overrides)) for i in range(n)]


@pytest.mark.timeout(240)
def test_three_nodes_keep_one_connection_limit(vhost, sinks, mta_config, start_mta, redis_url):
    sinks.set_data_delay(OK_MX[1], 0.05)  # slow enough that every node wants more connections
    _nodes(mta_config, start_mta, redis_url, 3,
           broker={"prefetch": 100},
           domains={"ok1.test": {"connection_limit": 3, "max_deliveries_per_connection": 10}})
    run = run_id()
    msgs = {f"cl-{run}-{i}": f"user{i}-{run}@ok1.test" for i in range(300)}
    publish(vhost, "bulk", [make_message(i, r) for i, r in msgs.items()])

    results = collect_results(vhost, msgs, timeout=180, settle=0.5)

    assert_each_final(results, msgs, "delivered")
    assert sinks.max_concurrent()[OK_MX[1]] == 3, sinks.max_concurrent()
    assert sum(1 for a in sinks.accepted() if a.sink == OK_MX[1]) == 300


@pytest.mark.timeout(240)
def test_two_nodes_keep_one_message_rate(vhost, sinks, mta_config, start_mta, redis_url):
    rate, n = 20, 200
    _nodes(mta_config, start_mta, redis_url, 2,
           broker={"prefetch": 100},
           domains={"ok2.test": {"max_message_rate": f"{rate}/s", "connection_limit": 4}})
    run = run_id()
    msgs = {f"mr-{run}-{i}": f"user{i}-{run}@ok2.test" for i in range(n)}
    publish(vhost, "bulk", [make_message(i, r) for i, r in msgs.items()])

    results = collect_results(vhost, msgs, timeout=180, settle=0.5)

    assert_each_final(results, msgs, "delivered")
    times = sorted(a.time for a in sinks.accepted() if a.sink == OK_MX[2])
    assert len(times) == n
    jitter = 0.25  # as for one process (test_shape_message_rate.py)
    per_1s, per_5s = most_in_window(times, 1.0), most_in_window(times, 5.0)
    assert per_5s <= rate * (5 + jitter) + 1, f"{per_5s} in 5 s (1 s: {per_1s})"
    assert per_1s <= rate * (1 + jitter) + 1, f"{per_1s} in 1 s (5 s: {per_5s})"
    elapsed = times[-1] - times[0]
    assert elapsed >= (n - 1) / rate * 0.95, f"{elapsed:.1f}s for {n} at {rate}/s"


@pytest.mark.timeout(240)
def test_a_too_many_connections_learned_by_one_node_holds_on_all(vhost, sinks, mta_config, start_mta, redis_url):
    """The receiver takes 3 sessions from all the nodes together: once one node is told
    "421 too many connections", the limit across all of them is what was open less one, and
    no node asks for a fourth again."""
    sink = OK_MX[3]
    sinks.set_session_limit(sink, 3)
    sinks.set_data_delay(sink, 0.05)
    _nodes(mta_config, start_mta, redis_url, 3, broker={"prefetch": 100},
           domains={"ok3.test": {"connection_limit": 10, "max_deliveries_per_connection": 20}})
    run = run_id()
    msgs = {f"tm-{run}-{i}": f"user{i}-{run}@ok3.test" for i in range(450)}
    publish(vhost, "bulk", [make_message(i, r) for i, r in msgs.items()])

    results = collect_results(vhost, msgs, timeout=200, settle=0.5)

    assert_each_final(results, msgs, "delivered")
    refusals = sorted(e.time for e in sinks.events() if e.kind == "refused" and e.sink == sink)
    accepted = sorted(a.time for a in sinks.accepted() if a.sink == sink)
    assert refusals, "the receiver never had to refuse: the test did not reach its limit"
    assert sinks.max_admitted()[sink] == 3
    late = [t for t in refusals if t >= accepted[len(accepted) // 4]]
    assert not late, f"{len(refusals)} refusals, {len(late)} after the first quarter: not learned by all"
