"""Always 451: retried until max_age, then exactly one final `expired` (soft)."""

import time

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import assert_each_final, run_id


@pytest.mark.timeout(120)
def test_expired_after_max_age(vhost, sinks, start_mta, mta_config):
    start_mta(mta_config(default={"retry_intervals": ["1s", "2s"], "max_age": "4s"}))
    run = run_id()
    msgs = {f"ex-{run}-{i}": f"temp-{run}-{i}@ok1.test" for i in range(3)}
    t0 = time.time()
    publish(vhost, "single", [make_message(i, r) for i, r in msgs.items()])

    coll = ResultCollector(vhost)
    coll.collect(msgs, timeout=60, settle=0.5)
    time.sleep(3.0)                      # nothing may follow the final result
    results = coll.collect((), timeout=1.0, settle=1.0)

    by_id = assert_each_final(results, msgs, "expired")
    attempts_after = sinks.rcpt_attempts()
    for i, res in by_id.items():
        seq = results[i]
        assert seq[-1] is res, f"the expired result must be the last one: {seq}"
        assert all(r["status"] == "deferred" and r["final"] is False for r in seq[:-1]), seq
        assert res["bounce"] == "soft", res
        assert res["attempts"] >= 2, res
        assert len(res["results"]) == res["attempts"], res
        assert attempts_after[msgs[i]] == res["attempts"], "no SMTP attempt after expiry"
    assert time.time() - t0 >= 4.0 - 0.5
    assert not any(i in sinks.count_by_id() for i in msgs)
