"""A receiver that greets a 4th simultaneous session with "421 too many connections" ends
up served with 3: the MTA learns the number and stops asking for more."""

import time

import pytest

from tests.testbed.amqp import collect_results, make_message, publish
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.dns import OK_MX

LIMIT = 3


@pytest.mark.timeout(240)
def test_learns_the_receivers_session_limit(vhost, sinks, mta_config, start_mta):
    sink = OK_MX[3]
    sinks.set_session_limit(sink, LIMIT)
    sinks.set_data_delay(sink, 0.05)
    start_mta(mta_config(domains={"ok3.test": {"connection_limit": 10, "max_deliveries_per_connection": 20}}))
    run = run_id()
    msgs = {f"tm-{run}-{i}": f"user{i}-{run}@ok3.test" for i in range(600)}
    started = time.time()
    publish(vhost, "bulk", [make_message(i, r) for i, r in msgs.items()])

    results = collect_results(vhost, msgs, timeout=200, settle=0.5)

    assert_each_final(results, msgs, "delivered")
    accepted = sorted(a.time for a in sinks.accepted() if a.sink == sink)
    refusals = sorted(e.time for e in sinks.events() if e.kind == "refused" and e.sink == sink)
    assert refusals, "the receiver never had to refuse: the test did not reach its limit"
    # Served with 3: the receiver's limit was reached (sessions past the greeting) ...
    assert sinks.max_admitted()[sink] == LIMIT
    # ... and once learned, the refusals stop: none in the second half of the run.
    half = accepted[len(accepted) // 2]
    late = [t for t in refusals if t >= half]
    assert len(late) <= 1, f"{len(late)} refusals after {half - started:.1f}s: the limit was not learned"
