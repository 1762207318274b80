"""Inside the bulk lane, a small campaign to a destination is not starved by a huge one
that arrived first: the campaigns take turns."""

import pytest

from tests.testbed.amqp import collect_results, make_message, publish
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.dns import OK_MX

BIG, SMALL, RATE = 800, 40, 40


@pytest.mark.timeout(240)
def test_small_campaign_takes_turns_with_a_big_one(vhost, sinks, mta_config, start_mta):
    start_mta(mta_config(domains={"ok1.test": {"max_message_rate": f"{RATE}/s", "connection_limit": 4}}))
    run = run_id()
    big = {f"big-{run}-{i}": f"big{i}-{run}@ok1.test" for i in range(BIG)}
    small = {f"small-{run}-{i}": f"small{i}-{run}@ok1.test" for i in range(SMALL)}
    publish(vhost, "bulk", [make_message(i, r, tags=["spring-sale"]) for i, r in big.items()])
    publish(vhost, "bulk", [make_message(i, r, tags=["invoice-run"]) for i, r in small.items()])

    results = collect_results(vhost, {**big, **small}, timeout=180, settle=0.5)

    assert_each_final(results, {**big, **small}, "delivered")
    order = [a.msg_id for a in sorted(sinks.accepted(), key=lambda a: a.time) if a.sink == OK_MX[1]]
    last_small = max(order.index(i) for i in small)
    big_before = sum(1 for i in order[:last_small] if i in big)
    # Taking turns, the small campaign is through after about as many big messages as it
    # has (plus what was already on the wire); first come, first served it would wait for
    # all 800.
    assert big_before <= 4 * SMALL, f"{big_before} big messages went before the small campaign was done"
