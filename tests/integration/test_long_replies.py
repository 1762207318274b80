"""A receiver that answers RCPT three times in a row with a 64 KB multi-line 451: the
message is retried and delivered at the fourth attempt, each attempt keeps at most 512
octets of the reply, and the retry copies (which carry the history) never grow past the
broker's frame size, so the broker connection never breaks."""

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import assert_each_final, run_id

LINES = 64


def long_reply() -> str:
    """451 in 64 lines of 1,000 octets: 64,000 octets, under the MTA's 64 KiB reply cap."""
    lines = [f"451-4.2.0 line {k:02d} " + chr(ord("a") + k % 26) * 980 for k in range(LINES - 1)]
    return "\r\n".join(lines + ["451 4.2.0 " + "z" * 990])


@pytest.mark.timeout(180)
def test_long_replies_are_cut_and_the_broker_connection_holds(vhost, sinks, start_mta, mta_config):
    mta = start_mta(mta_config(default={"retry_intervals": ["1s"], "max_age": "90s"}))
    run = run_id()
    sinks.add_rule("long-", long_reply(), times=3)
    msgs = {f"lr-{run}-{i}": f"long-{run}-{i}@ok{1 + i}.test" for i in range(2)}
    publish(vhost, "single", [make_message(i, r) for i, r in msgs.items()])

    results = ResultCollector(vhost).collect(msgs, timeout=120, settle=1.0)

    by_id = assert_each_final(results, msgs, "delivered")
    for i, final in by_id.items():
        assert [r["status"] for r in results[i]] == ["deferred"] * 3 + ["delivered"], results[i]
        assert [r["attempts"] for r in results[i]] == [1, 2, 3, 4]
        assert [a["code"] for a in final["results"]] == [451, 451, 451, 250], final["results"]
        for attempt in final["results"][:3]:
            text = attempt["description"]
            assert len(text.encode("utf-8")) <= 512, len(text.encode("utf-8"))
            assert text.startswith("4.2.0 line 00 aaaa") and text.endswith("…"), text[:80]
    assert sinks.rcpt_attempts() == {r: 4 for r in msgs.values()}
    assert sinks.count_by_id() == {i: 1 for i in msgs}
    log = mta.log_text()
    for trouble in ("broker session", "lost the broker", "publish failed"):
        assert trouble not in log, (trouble, mta.log_tail())
