"""Producer headers the MTA cannot write again, among good mail: invalid messages whose
header is bytes that are not UTF-8, and a deliverable one whose `x-mta-first` is far beyond
any AMQP integer. The invalid ones fail alone: each lands in `mta.invalid` without that
header and gets one `invalid` result with the reason; the producer's `x-mta-first` counts
for nothing (only our own delay queues' copies carry it), so that message gets a normal
first attempt and its retry copy goes out. Every good message, before and after them, gets
exactly its own result, and every delivery is acknowledged: the client's count of publishes
stays the broker's, so each confirm settles the publish it belongs to. (A retry copy that
cannot be encoded is covered by tests/mta/test_settle.py: no producer can cause one now.)"""

import pytest

from tests.testbed.amqp import ResultCollector, drain_queue, make_message, publish, queue_info
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.rawheaders import RawLongStr, publish_raw


@pytest.mark.timeout(180)
def test_unwritable_producer_headers_fail_alone(vhost, sinks, mta_config, start_mta):
    # a short life: the deferred message's retries end (expired) within seconds, not 30 s
    mta = start_mta(mta_config(default={"retry_intervals": ["1s", "2s"], "max_age": "6s"}))
    run = run_id()
    first_wave = {f"ph-{run}-a{i}": f"user-{run}-a{i}@ok{1 + i % 3}.test" for i in range(20)}
    second_wave = {f"ph-{run}-b{i}": f"user-{run}-b{i}@ok{1 + i % 3}.test" for i in range(20)}
    far_future = f"ph-{run}-first"  # deferred (451), a normal first attempt
    blob = {"x-producer-blob": RawLongStr(b"\xff\xfe\xfd"), "x-trace": f"trace-{run}"}

    firsts = [make_message(i, r) for i, r in first_wave.items()]
    publish(vhost, "single", firsts[:10])
    publish_raw(vhost, "mta", "single", [(b"not json {", blob)])
    publish_raw(vhost, "mta", "bulk", [(b"[1, 2]", blob)])
    far_body = make_message(far_future, f"temp-{run}@ok1.test")
    publish(vhost, "bulk", [far_body], headers={"x-mta-first": "9" * 30})
    publish(vhost, "bulk", firsts[10:])
    coll = ResultCollector(vhost)
    coll.collect(list(first_wave) + [far_future], timeout=60, settle=0.5,
                 until=lambda c: c.count("invalid") >= 2 and c.count("deferred") >= 1)
    publish(vhost, "single", [make_message(i, r) for i, r in list(second_wave.items())[:10]])
    publish(vhost, "bulk", [make_message(i, r) for i, r in list(second_wave.items())[10:]])
    results = coll.collect(second_wave, timeout=60, settle=1.0)

    good = {**first_wave, **second_wave}
    assert_each_final(results, good, "delivered")
    assert all(len(results[i]) == 1 for i in good), {i: results[i] for i in good if len(results[i]) != 1}
    assert sinks.count_by_id() == {i: 1 for i in good}

    first = results[far_future][0]
    assert first["status"] == "deferred" and first["attempts"] == 1, results[far_future]
    assert [a["code"] for a in first["results"]] == [451]
    assert coll.count("invalid") == 2

    parked = {p.body: p.headers for p in drain_queue(vhost, "mta.invalid", expect=2, timeout=30)}
    assert set(parked) == {b"not json {", b"[1, 2]"}
    for body in (b"not json {", b"[1, 2]"):
        headers = parked[body]
        assert "x-producer-blob" not in headers and headers["x-trace"] == f"trace-{run}", headers
        assert "x-producer-blob" in headers["x-mta-error"], headers

    # every delivery acknowledged, no publish failed, the broker connection held
    assert queue_info(vhost, "mta.single")["messages"] == 0 and queue_info(vhost, "mta.bulk")["messages"] == 0
    log = mta.log_text()
    for trouble in ("publish failed", "Unexpected confirmation", "broker session", "lost the broker"):
        assert trouble not in log, (trouble, mta.log_tail())
    assert mta.alive()
