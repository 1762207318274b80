"""max_connection_rate 1/min and a burst of mail that needs a connection per message:
the first message goes out at once, the rest is held in a delay queue until the next
connection is allowed (no attempt counted), instead of waiting a minute unacknowledged
in a worker."""

import time

import pytest

from tests.testbed.amqp import ResultCollector, make_message, queue_info, publish
from tests.testbed.checks import run_id
from tests.testbed.dns import OK_MX
from mta.broker.topology import delay_queue
from shaper.retry import DELAY_LADDER


def _held(vhost) -> int:
    held = 0
    for seconds in DELAY_LADDER:
        info = queue_info(vhost, delay_queue("bulk", seconds))
        held += info["messages"] if info else 0
    return held


@pytest.mark.timeout(120)
def test_a_far_connection_slot_holds_the_mail(vhost, sinks, mta_config, start_mta):
    start_mta(mta_config(domains={"ok2.test": {"max_connection_rate": "1/min", "connection_limit": 1,
                                               "max_deliveries_per_connection": 1}}))
    run = run_id()
    msgs = {f"cr-{run}-{i}": f"user{i}-{run}@ok2.test" for i in range(5)}
    publish(vhost, "bulk", [make_message(i, r) for i, r in msgs.items()])

    collector = ResultCollector(vhost)
    collector.collect((), timeout=20, settle=0, until=lambda c: c.count("delivered") >= 1)
    deadline = time.monotonic() + 15
    while _held(vhost) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    held = _held(vhost)
    collector.collect((), timeout=1, settle=0)

    print(f"delivered {collector.count('delivered')}, held {held}, sink connections {sinks.connections().get(OK_MX[2])}")
    assert collector.count("delivered") == 1
    assert collector.count() == 1  # no deferral, no other result: the rest was not tried
    assert held == 4
    assert sinks.connections().get(OK_MX[2]) == 1
    lane = queue_info(vhost, "mta.bulk")
    assert lane["messages"] == 0  # nothing back in the lane either: all acknowledged and held
