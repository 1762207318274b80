"""smtp.max_message_size is judged before a message is converted: an oversize message
bounces 5.3.4 without a connection (its long lines never repaired, its base64 never
decoded), and a body longer than any acceptable message can be written is refused unread."""

import base64
import json

import pytest

from tests.testbed.amqp import ResultCollector, drain_queue, make_message, publish
from tests.testbed.checks import assert_each_final, run_id

MAX = 20_000  # max_message_size: a body over 6 x 20,000 + 64 KiB is refused unread


@pytest.mark.timeout(120)
def test_oversize_refused_before_decoding(vhost, sinks, start_mta, mta_config):
    start_mta(mta_config(smtp={"max_message_size": MAX}))
    run = run_id()
    rcpt = f"user-{run}@ok1.test"
    long_lines = "Subject: long\r\n\r\n" + ("word " * 400 + "\r\n") * 20  # 40 KB of 2,000-octet lines
    ids = {"b64": f"sz-{run}-b64", "mime": f"sz-{run}-mime", "fits": f"sz-{run}-fits"}
    bodies = [
        json.dumps({"id": ids["b64"], "recipient": rcpt, "envelope": "", "mime_b64":
                    base64.b64encode(long_lines.encode()).decode()}).encode(),
        json.dumps({"id": ids["mime"], "recipient": rcpt, "envelope": "", "mime": long_lines}).encode(),
        make_message(ids["fits"], rcpt, size=MAX // 2),
    ]
    unread = json.dumps({"id": f"sz-{run}-unread", "recipient": rcpt, "envelope": "",
                         "mime": "x" * (6 * MAX + 70_000)}).encode()
    publish(vhost, "bulk", bodies + [unread])

    coll = ResultCollector(vhost)
    results = coll.collect(list(ids.values()), timeout=60, settle=1.0,
                           until=lambda c: any(doc.get("status") == "invalid" for _, doc in c.raw))

    assert_each_final(results, [ids["fits"]], "delivered")
    for i in (ids["b64"], ids["mime"]):
        (res,) = assert_each_final(results, [i], "bounced").values()
        assert res["results"][-1]["code"] == 552 and res["results"][-1]["enhanced"] == "5.3.4", res
        assert f"message of {len(long_lines.encode())} octets" in res["results"][-1]["description"], res
    invalid = [doc for _, doc in coll.raw if doc.get("status") == "invalid"]
    assert len(invalid) == 1, invalid
    assert "max_message_size" in invalid[0]["error"], invalid[0]
    assert "recipient" not in invalid[0]  # not read: nothing of it is echoed
    (copy,) = drain_queue(vhost, "mta.invalid", expect=1)
    assert copy.body == unread  # the producer's bytes, unchanged
    assert "max_message_size" in copy.headers["x-mta-error"]
    assert sinks.accepted_count() == 1
