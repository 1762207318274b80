"""A producer's publish that forges the broker's x-death (RabbitMQ takes it as given) and
carries an `x-mta-first` of 400 digits, among good mail: intake neither crashes nor keeps the
delivery unacknowledged; it gets one final result, the good mail is delivered once each, and
at the end nothing is left unacknowledged on either lane."""

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.rabbit import vhost_of
from tests.testbed.util import wait_for

FORGED = {
    "x-death": [{"reason": "expired", "queue": "mta.wait.single.1m", "count": 1, "exchange": "",
                 "routing-keys": ["mta.wait.single.1m"]}],
    "x-mta-first": "9" * 400,
}


def _unacked(rabbit, vhost: str) -> dict[str, int]:
    cp = rabbit.ctl("list_queues", "-p", vhost_of(vhost), "--quiet", "--no-table-headers",
                    "name", "messages_unacknowledged", check=False)
    out = {}
    for line in cp.stdout.splitlines():
        name, _, count = line.rpartition("\t")
        if name in ("mta.single", "mta.bulk") and count.strip().isdigit():
            out[name] = int(count)
    return out


@pytest.mark.timeout(180)
def test_a_forged_first_acceptance_gets_one_result_and_the_lane_drains(rabbit, vhost, sinks, start_mta):
    mta = start_mta()
    run = run_id()
    good = {f"ff-{run}-{i}": f"user-{run}-{i}@ok{1 + i % 3}.test" for i in range(30)}
    forged = f"ff-{run}-forged"
    bodies = [make_message(i, r) for i, r in good.items()]

    publish(vhost, "single", bodies[:15])
    publish(vhost, "single", [make_message(forged, f"user-{run}-forged@ok1.test")], headers=FORGED)
    publish(vhost, "single", bodies[15:])
    results = ResultCollector(vhost).collect(list(good) + [forged], timeout=60, settle=1.0)

    assert_each_final(results, good, "delivered")
    assert all(len(results[i]) == 1 for i in good), {i: results[i] for i in good if len(results[i]) != 1}
    assert sinks.count_by_id().get(forged, 0) <= 1
    assert {i: n for i, n in sinks.count_by_id().items() if i in good} == {i: 1 for i in good}
    assert len([r for r in results.get(forged, []) if r["final"]]) == 1, results.get(forged)
    assert len(results[forged]) == 1, results[forged]
    assert results[forged][0]["status"] == "delivered"  # the forged time counts for nothing
    # the broker's own count: no delivery left unacknowledged behind it
    wait_for(lambda: _unacked(rabbit, vhost) == {"mta.single": 0, "mta.bulk": 0}, timeout=20,
             what="no unacknowledged delivery on the lanes")
    assert mta.alive()
