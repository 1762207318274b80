"""A receiver that answers DATA with "250 Ok" instead of 354 has taken no message: every
attempt is deferred as a protocol failure naming the phase and the reply, no message is
reported delivered, and nothing (no content) is sent to the receiver after its lie."""

from __future__ import annotations

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.dns import bulk_ip


@pytest.mark.timeout(120)
def test_250_to_data_is_deferred_never_delivered(vhost, sinks, start_mta, mta_config):
    ip = bulk_ip(84)
    sinks.set_manner(ip, "data250")
    try:
        start_mta(mta_config(domains={"d84.test": {"retry_intervals": ["1s"], "max_age": "3s"}}))
        run = run_id()
        msgs = {f"lie-{run}-{i}": f"user{i}-{run}@d84.test" for i in range(6)}
        publish(vhost, "bulk", [make_message(i, r) for i, r in msgs.items()])

        results = ResultCollector(vhost).collect(list(msgs), timeout=60, settle=0.5)
        by_id = assert_each_final(results, msgs, "expired")
        for i, final in by_id.items():
            statuses = [r["status"] for r in results[i]]
            assert "delivered" not in statuses, results[i]
            assert statuses[:-1] and set(statuses[:-1]) == {"deferred"}, statuses
            for attempt in final["results"]:
                assert attempt["phase"] == "data" and attempt["code"] is None, attempt
                assert "protocol error" in attempt["description"] and "250 2.0.0 Ok" in attempt["description"], attempt
        assert not any(a.sink == ip for a in sinks.accepted())
        assert sinks.after_lie().get(ip) == b"", "the receiver was sent something after it answered DATA with 250"
    finally:
        sinks.set_manner(ip, None)
