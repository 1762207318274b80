"""5xx at RCPT: a bounce at the first attempt, never retried; 5.1.1 hard, 5.2.2 soft."""

import time

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import assert_each_final, run_id


@pytest.mark.timeout(120)
def test_hard_and_soft_bounce(vhost, sinks, start_mta):
    start_mta()
    run = run_id()
    hard = {f"hb-{run}-{i}": f"hard-{run}-{i}@ok1.test" for i in range(5)}
    full = {f"sb-{run}-{i}": f"full-{run}-{i}@ok2.test" for i in range(5)}
    publish(vhost, "single", [make_message(i, r) for i, r in {**hard, **full}.items()])

    coll = ResultCollector(vhost)
    coll.collect(list(hard) + list(full), timeout=60, settle=0.5)
    # longer than every retry interval (1 s, 2 s): a retry would show up now
    time.sleep(3.5)
    results = coll.collect((), timeout=1.0, settle=1.0)

    for group, kind, code, enh in ((hard, "hard", 550, "5.1.1"), (full, "soft", 552, "5.2.2")):
        by_id = assert_each_final(results, group, "bounced")
        for i, res in by_id.items():
            assert [r["status"] for r in results[i]] == ["bounced"], results[i]
            assert res["bounce"] == kind, res
            assert res["attempts"] == 1, res
            last = res["results"][-1]
            assert last["code"] == code and last["enhanced"] == enh, last
            assert last["phase"] == "rcpt", last

    attempts = sinks.rcpt_attempts()
    for rcpt in list(hard.values()) + list(full.values()):
        assert attempts.get(rcpt) == 1, (rcpt, attempts.get(rcpt))
    counts = sinks.count_by_id()
    assert not any(i in counts for i in list(hard) + list(full))
