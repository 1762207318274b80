"""The reply-deciding pattern actions end to end: a `bounce` rule makes a temporary reply
final, a `retry` rule makes a permanent one temporary (deferred, then retried), and a rule
matches a refusing banner (554 at connect) like any other reply."""

import time

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.dns import OK_MX


@pytest.mark.timeout(120)
def test_bounce_and_retry_rules_override_the_reply_code(vhost, sinks, mta_config, start_mta):
    sinks.add_rule("blocked-", "451 4.7.1 <{rcpt}>: sender permanently blocked by policy")
    sinks.add_rule("quota-", "552 5.2.2 <{rcpt}>: mailbox over quota, try again later", times=1)
    start_mta(mta_config(
        default={"retry_intervals": ["1s"], "max_age": "10m"},
        patterns=[{"match": "(?i)permanently blocked", "action": "bounce"},
                  {"code": 552, "match": "(?i)try again later", "action": "retry"}]))
    run = run_id()
    blocked = {f"blk-{run}-{i}": f"blocked-{run}-{i}@ok1.test" for i in range(3)}
    quota = {f"quo-{run}-{i}": f"quota-{run}-{i}@ok2.test" for i in range(3)}
    full = {f"full-{run}": f"full-{run}@ok2.test"}  # 552 without "try again later": no rule, a bounce
    publish(vhost, "bulk", [make_message(i, r) for i, r in {**blocked, **quota, **full}.items()])

    collector = ResultCollector(vhost)
    collector.collect({**blocked, **quota, **full}, timeout=90, settle=1.0)

    by_id = assert_each_final(collector.by_id, blocked, "bounced")
    for i, res in by_id.items():
        assert [r["status"] for r in collector.by_id[i]] == ["bounced"], collector.by_id[i]
        assert res["attempts"] == 1 and res["results"][0]["code"] == 451, res
    by_id = assert_each_final(collector.by_id, quota, "delivered")
    for i, res in by_id.items():
        assert [r["status"] for r in collector.by_id[i]] == ["deferred", "delivered"], collector.by_id[i]
        assert [a["code"] for a in res["results"]] == [552, 250], res["results"]
    assert_each_final(collector.by_id, full, "bounced")
    assert sinks.rcpt_attempts() == {**{r: 1 for r in blocked.values()}, **{r: 2 for r in quota.values()},
                                     **{r: 1 for r in full.values()}}


@pytest.mark.timeout(150)
def test_a_rule_matches_a_refusing_banner(vhost, sinks, mta_config, start_mta):
    sink = OK_MX[3]
    sinks.set_greeting(sink, "554 5.7.1 Service unavailable; client host [127.0.0.1] blocked using rbl.example")
    mta = start_mta(mta_config(
        default={"retry_intervals": ["1s"], "max_age": "10m"},
        patterns=[{"code": 554, "match": r"blocked using rbl\.example", "action": "suspend", "duration": "8s"}]))
    run = run_id()
    msgs = {f"rbl-{run}-{i}": f"user{i}-{run}@ok3.test" for i in range(5)}
    publish(vhost, "bulk", [make_message(i, r) for i, r in msgs.items()])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "normal -> paused (patterns[0]" not in mta.log_text():
        time.sleep(0.1)
    assert "normal -> paused (patterns[0] code 554" in mta.log_text(), mta.log_tail()
    suspended_at = time.time()
    sinks.set_greeting(sink, None)  # the listing is gone by the time the suspension ends

    collector = ResultCollector(vhost)
    collector.collect(msgs, timeout=90, settle=0.5)
    by_id = assert_each_final(collector.by_id, msgs, "delivered")
    assert all(r["attempts"] == 1 for r in by_id.values()), "a suspension must not count attempts"
    assert all(len(collector.by_id[i]) == 1 for i in msgs), "held mail publishes no result"
    first = min(a.time for a in sinks.accepted() if a.msg_id in msgs)
    assert first >= suspended_at + 6.0, "mail went out during the suspension"


@pytest.mark.timeout(120)
def test_a_retry_rule_makes_a_554_banner_temporary(vhost, sinks, mta_config, start_mta):
    """Without the rule a 554 greeting bounces the message; with it, the message is deferred."""
    sink = OK_MX[1]
    sinks.set_greeting(sink, "554 5.7.1 Service unavailable; client host [127.0.0.1] blocked using rbl.example")
    start_mta(mta_config(
        default={"retry_intervals": ["1m"], "max_age": "10m"},
        patterns=[{"code": 554, "match": r"blocked using rbl\.example", "action": "retry"}]))
    run = run_id()
    msg = f"rblr-{run}"
    publish(vhost, "bulk", [make_message(msg, f"user-{run}@ok1.test")])
    collector = ResultCollector(vhost)
    collector.collect((), timeout=60, settle=1.0, until=lambda c: bool(c.by_id.get(msg)))
    assert [r["status"] for r in collector.by_id[msg]] == ["deferred"], collector.by_id[msg]
    attempt = collector.by_id[msg][0]["results"][-1]
    assert attempt["code"] == 554 and attempt["phase"] in ("connect", "ehlo"), attempt
