"""451 twice, then accepted: two deferrals, delivered at attempt 3, intervals respected."""

import pytest

from tests.testbed.amqp import collect_results, make_message, publish
from tests.testbed.checks import assert_each_final, parse_time, run_id

INTERVALS = [1.0, 2.0]       # the test config's retry_intervals: [1s, 2s]


@pytest.mark.timeout(120)
def test_deferred_twice_then_delivered(vhost, sinks, start_mta, mta_config):
    start_mta(mta_config(default={"retry_intervals": ["1s", "2s"], "max_age": "60s"}))
    run = run_id()
    msgs = {f"rt-{run}-{i}": f"temp2-{run}-{i}@ok{1 + i % 3}.test" for i in range(3)}
    publish(vhost, "single", [make_message(i, r) for i, r in msgs.items()])

    results = collect_results(vhost, msgs, timeout=60, settle=1.0)

    by_id = assert_each_final(results, msgs, "delivered")
    events = sinks.events()
    accepted = sinks.accepted()
    for i, res in by_id.items():
        seq = results[i]
        assert [r["status"] for r in seq] == ["deferred", "deferred", "delivered"], seq
        assert [r["final"] for r in seq] == [False, False, True]
        assert [r["attempts"] for r in seq] == [1, 2, 3], seq
        assert res["attempts"] == 3
        assert len(res["results"]) == 3, res["results"]
        assert [a["code"] for a in res["results"]] == [451, 451, 250], res["results"]
        # gaps between attempts per the results list (RFC 3339 times)
        times = [parse_time(a["time"]) for a in res["results"]]
        for k, interval in enumerate(INTERVALS):
            gap = times[k + 1] - times[k]
            assert gap >= interval - 0.05, (i, k, gap, res["results"])
        # the same gaps seen by the receiving side (RCPT refusals, then acceptance)
        rcpt = msgs[i]
        seen = sorted([e.time for e in events if e.rcpt == rcpt]
                      + [a.time for a in accepted if a.rcpt == rcpt])
        assert len(seen) == 3, seen
        for k, interval in enumerate(INTERVALS):
            assert seen[k + 1] - seen[k] >= interval - 0.01, (i, k, seen)
    assert sinks.rcpt_attempts() == {r: 3 for r in msgs.values()}
    counts = sinks.count_by_id()
    assert all(counts.get(i) == 1 for i in msgs), counts
