"""A receiver that answers "421 rate limited" above R messages per second, with no rule
configured for it: the MTA's rate converges near R and the refusals become rare."""

import pytest

from tests.testbed.amqp import collect_results, make_message, publish
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.dns import SHARED_MX

R = 10


@pytest.mark.timeout(300)
def test_rate_converges_near_the_receivers_limit(vhost, sinks, mta_config, start_mta):
    sinks.set_rate_limit(SHARED_MX, R)
    start_mta(mta_config(default={"retry_intervals": ["2s"], "max_age": "10m"},
                         domains={"shared-a.test": {"max_message_rate": "200/s", "connection_limit": 4}}))
    run = run_id()
    msgs = {f"rl-{run}-{i}": f"user{i}-{run}@shared-a.test" for i in range(400)}
    publish(vhost, "bulk", [make_message(i, r) for i, r in msgs.items()])

    results = collect_results(vhost, msgs, timeout=240, settle=0.5)

    assert_each_final(results, msgs, "delivered")
    accepted = sorted(a.time for a in sinks.accepted() if a.sink == SHARED_MX)
    refused = sorted(e.time for e in sinks.events() if e.sink == SHARED_MX and "Rate limited" in e.reply)
    start, end = accepted[0], accepted[-1]
    # The second half of the run is the steady state.
    mid = start + (end - start) / 2
    steady = [t for t in accepted if t >= mid]
    rate = len(steady) / (end - mid)
    late_refusals = [t for t in refused if t >= mid]
    assert rate >= 0.6 * R, f"steady rate {rate:.1f}/s, the receiver takes {R}/s"
    assert len(late_refusals) <= 0.2 * len(steady), \
        f"{len(late_refusals)} refusals against {len(steady)} accepted: not converged"
