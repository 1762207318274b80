"""Operators' response patterns act on the destination that answered: a `suspend` rule
holds its mail (no attempt counted) until the suspension ends; a `throttle` rule runs it
on reduced limits for the rule's duration; other destinations are untouched."""

import time

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.dns import OK_MX


@pytest.mark.timeout(180)
def test_suspend_rule_holds_the_destination_then_delivers(vhost, sinks, mta_config, start_mta):
    sinks.add_rule("tss-", "421 4.7.0 [TSS04] Messages from 127.0.0.1 temporarily deferred", times=1)
    mta = start_mta(mta_config(
        default={"retry_intervals": ["1s"], "max_age": "10m"},
        patterns=[{"match": "TSS04", "action": "suspend", "duration": "8s"}]))
    run = run_id()
    trigger = {f"trig-{run}": f"tss-{run}@ok1.test"}
    publish(vhost, "bulk", [make_message(i, r) for i, r in trigger.items()])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "paused" not in mta.log_text():
        time.sleep(0.1)
    assert "normal -> paused (patterns[0] match 'TSS04'" in mta.log_text()
    suspended_at = time.time()

    held = {f"held-{run}-{i}": f"user{i}-{run}@ok1.test" for i in range(20)}
    other = {f"other-{run}-{i}": f"user{i}-{run}@ok2.test" for i in range(20)}
    publish(vhost, "bulk", [make_message(i, r) for i, r in {**held, **other}.items()])
    collector = ResultCollector(vhost)
    collector.collect({**held, **other}, timeout=90, settle=0.5)

    assert_each_final(collector.by_id, other, "delivered")
    by_id = assert_each_final(collector.by_id, held, "delivered")
    assert all(r["attempts"] == 1 for r in by_id.values()), "a suspension must not count attempts"
    first_held = min(a.time for a in sinks.accepted() if a.msg_id in held)
    assert first_held >= suspended_at + 7.0, "mail went out during the suspension"
    first_other = min(a.time for a in sinks.accepted() if a.msg_id in other)
    assert first_other < suspended_at + 7.0, "another destination was held too"


@pytest.mark.timeout(180)
def test_throttle_rule_reduces_the_rate_for_its_duration(vhost, sinks, mta_config, start_mta):
    sinks.add_rule("slowdown-", "421 4.7.0 Rate limit exceeded, slow down", times=1)
    mta = start_mta(mta_config(
        default={"retry_intervals": ["1s"], "max_age": "10m"},
        patterns=[{"code": 421, "match": "(?i)rate limit", "action": "throttle", "duration": "15s",
                   "max_message_rate": "2/s", "connection_limit": 1}]))
    run = run_id()
    publish(vhost, "bulk", [make_message(f"trig-{run}", f"slowdown-{run}@ok3.test")])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "normal -> backoff" not in mta.log_text():
        time.sleep(0.1)
    assert "normal -> backoff" in mta.log_text()
    throttled_at = time.time()

    msgs = {f"thr-{run}-{i}": f"user{i}-{run}@ok3.test" for i in range(60)}
    publish(vhost, "bulk", [make_message(i, r) for i, r in msgs.items()])
    collector = ResultCollector(vhost)
    collector.collect(msgs, timeout=90, settle=0.5)
    assert_each_final(collector.by_id, msgs, "delivered")

    times = sorted(a.time for a in sinks.accepted() if a.msg_id in msgs)
    during = [t for t in times if t < throttled_at + 14.0]
    after = [t for t in times if t >= throttled_at + 16.0]
    assert len(during) <= 2 * 14 + 2, f"{len(during)} sent while throttled to 2/s"
    assert after, "the throttle never ended"
    assert sinks.max_concurrent()[OK_MX[3]] >= 1
    assert "backoff -> normal" in mta.log_text()
