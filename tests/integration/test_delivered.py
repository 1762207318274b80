"""50 messages to healthy destinations: each delivered exactly once."""

import pytest

from tests.testbed.amqp import collect_results, make_message, publish
from tests.testbed.checks import assert_each_final, run_id

# domain -> the sink address its MX (or A record) points at
DESTINATIONS = {
    "ok1.test": "127.0.1.1",
    "ok2.test": "127.0.1.2",
    "ok3.test": "127.0.1.3",
    "shared-a.test": "127.0.1.4",
    "amx.test": "127.0.1.6",        # no MX: implicit MX from the A record
}


@pytest.mark.timeout(180)
def test_delivered_exactly_once(vhost, sinks, start_mta):
    start_mta()
    run = run_id()
    domains = list(DESTINATIONS)
    msgs = {f"dlv-{run}-{i}": f"user{i}-{run}@{domains[i % len(domains)]}" for i in range(50)}
    ids = list(msgs)
    # both lanes: even ids on single, odd on bulk; a pass-through field on each
    for lane, part in (("single", ids[0::2]), ("bulk", ids[1::2])):
        publish(vhost, lane, [make_message(i, msgs[i], campaign=f"c-{run}") for i in part])

    results = collect_results(vhost, ids, timeout=90, settle=1.0)

    by_id = assert_each_final(results, ids, "delivered")
    for i, res in by_id.items():
        assert [r["status"] for r in results[i]] == ["delivered"], (i, results[i])
        assert res["attempts"] == 1, res
        assert res["recipient"] == msgs[i]
        assert res["campaign"] == f"c-{run}", "unknown fields pass through into results"
        assert "mime" not in res and "mime_b64" not in res
        assert isinstance(res["results"], list) and len(res["results"]) == 1, res
        assert res["results"][0]["code"] == 250, res["results"][0]

    counts = sinks.count_by_id()
    assert {i: counts.get(i, 0) for i in ids} == {i: 1 for i in ids}
    for a in sinks.accepted():
        if a.msg_id in msgs:
            domain = msgs[a.msg_id].split("@")[1]
            assert a.sink == DESTINATIONS[domain], (a.msg_id, a.sink)
            assert a.rcpt == msgs[a.msg_id]
            assert a.mail_from == "sender@sender.test"
            assert f"Message-ID: <{a.msg_id}@test>".encode() in a.data
