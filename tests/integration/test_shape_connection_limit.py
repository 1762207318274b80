"""A destination limited to 2 connections never sees a third, and does use both."""

import pytest

from tests.testbed.amqp import collect_results, make_message, publish
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.dns import OK_MX


@pytest.mark.timeout(180)
def test_connection_limit_holds_at_the_sink(vhost, sinks, mta_config, start_mta):
    sinks.set_data_delay(OK_MX[1], 0.05)  # slow enough that the MTA wants more connections
    start_mta(mta_config(domains={"ok1.test": {"connection_limit": 2, "max_deliveries_per_connection": 10}}))
    run = run_id()
    msgs = {f"cl-{run}-{i}": f"user{i}-{run}@ok1.test" for i in range(200)}
    publish(vhost, "bulk", [make_message(i, r) for i, r in msgs.items()])

    results = collect_results(vhost, msgs, timeout=120, settle=0.5)

    assert_each_final(results, msgs, "delivered")
    assert sinks.max_concurrent()[OK_MX[1]] == 2
    assert sinks.connections()[OK_MX[1]] >= 20, "sessions were not recycled after 10 messages"
