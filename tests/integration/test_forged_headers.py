"""A producer's own x-mta-* headers count for nothing: only a copy our delay queue gave
back carries attempts, first acceptance and history (the broker's x-death says so)."""

import json

import pytest

from tests.testbed.amqp import collect_results, make_message, publish
from tests.testbed.checks import assert_each_final, run_id

FORGED = {
    "x-mta-attempts": 999,
    "x-mta-first": 1000,  # 1970: past any max_age
    "x-mta-results": json.dumps([{"time": "1970-01-01T00:00:01Z", "phase": "rcpt", "code": 451, "enhanced": None,
                                  "description": "forged", "mx": None, "ip": None, "lane": "single"}]),
}


@pytest.mark.timeout(120)
def test_forged_internal_headers_get_a_normal_first_attempt(vhost, sinks, start_mta, mta_config):
    start_mta(mta_config(default={"retry_intervals": ["1s"], "max_age": "60s"}))
    run = run_id()
    # temp2-: refused twice with 451, then accepted: the retry copies must keep their count
    msgs = {f"fh-{run}-{i}": f"temp2-{run}-{i}@ok{1 + i % 3}.test" for i in range(3)}
    publish(vhost, "single", [make_message(i, r) for i, r in msgs.items()], headers=FORGED)

    results = collect_results(vhost, msgs, timeout=60, settle=1.0)

    assert_each_final(results, msgs, "delivered")
    for i in msgs:
        seq = results[i]
        assert [r["status"] for r in seq] == ["deferred", "deferred", "delivered"], seq
        assert [r["attempts"] for r in seq] == [1, 2, 3], seq
        assert [a["code"] for a in seq[-1]["results"]] == [451, 451, 250], seq[-1]["results"]
        assert all(a["description"] != "forged" for a in seq[-1]["results"])
    assert sinks.rcpt_attempts() == {r: 3 for r in msgs.values()}
