"""A producer's message whose id no retry copy could carry (200 KB, beside an integer of 400
digits) among good mail: it ends `invalid` at intake with the reason, once; the good mail
before and after it is delivered once each, the lanes drain, the settler keeps settling,
and no log line carries the id whole."""

import json

import pytest

from tests.testbed.amqp import ResultCollector, drain_queue, make_message, publish, queue_info
from tests.testbed.checks import assert_each_final, run_id

HUGE_ID = "x" * 200_000


def huge_id_message(recipient: str) -> bytes:
    # 451 at RCPT: before intake refused such an id, the retry copy was where it broke
    doc = {"id": HUGE_ID, "recipient": recipient, "envelope": "sender@sender.test",
           "mime": "Subject: huge id\r\n\r\nhello\r\n", "n": int("9" * 400)}
    return json.dumps(doc).encode()


@pytest.mark.timeout(180)
def test_a_message_with_a_huge_id_is_invalid_once_and_the_rest_flows(vhost, sinks, start_mta):
    mta = start_mta()
    run = run_id()
    first_wave = {f"hi-{run}-a{i}": f"user-{run}-a{i}@ok{1 + i % 3}.test" for i in range(20)}
    second_wave = {f"hi-{run}-b{i}": f"user-{run}-b{i}@ok{1 + i % 3}.test" for i in range(20)}

    firsts = [make_message(i, r) for i, r in first_wave.items()]
    publish(vhost, "bulk", firsts[:10])
    publish(vhost, "bulk", [huge_id_message(f"temp-{run}@ok1.test")])
    publish(vhost, "bulk", firsts[10:])
    coll = ResultCollector(vhost)
    coll.collect(list(first_wave) + [HUGE_ID], timeout=60, settle=1.0)
    publish(vhost, "bulk", [make_message(i, r) for i, r in second_wave.items()])
    results = coll.collect(second_wave, timeout=60, settle=1.0)

    good = {**first_wave, **second_wave}
    assert_each_final(results, good, "delivered")
    assert all(len(results[i]) == 1 for i in good), {i: results[i] for i in good if len(results[i]) != 1}
    assert sinks.count_by_id() == {i: 1 for i in good}

    [refused] = results[HUGE_ID]
    assert refused["status"] == "invalid" and refused["final"] is True, {k: str(v)[:100] for k, v in refused.items()}
    assert refused["error"].startswith("id: longer than 1000 characters"), refused["error"][:200]
    parked = drain_queue(vhost, "mta.invalid", expect=1, timeout=30)
    assert len(parked) == 1 and parked[0].headers["x-mta-error"].startswith("id: longer than 1000 characters")

    assert queue_info(vhost, "mta.bulk")["messages"] == 0
    log = mta.log_text()
    assert max(len(line) for line in log.splitlines()) < 2000, "a log line carries the id whole"
    for trouble in ("publish failed", "unexpectedly", "broker session", "lost the broker"):
        assert trouble not in log, (trouble, mta.log_tail()[:3000])
    assert mta.alive()
