"""`tls: required` never sends in plaintext: to a receiver that offers no STARTTLS every
attempt is deferred at the `tls` phase, the sink never sees a transaction, and the message
expires at its maximum age instead of going out unencrypted. Other domains are untouched."""

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import assert_each_final, run_id


@pytest.mark.timeout(120)
def test_required_tls_defers_when_starttls_is_missing(vhost, sinks, mta_config, start_mta):
    # ok1.test's MX is a plain sink without STARTTLS
    start_mta(mta_config(domains={"ok1.test": {"tls": "required", "retry_intervals": ["1s"], "max_age": "4s"}}))
    run = run_id()
    strict = {f"s-{run}-{i}": f"u{i}-{run}@ok1.test" for i in range(5)}
    relaxed = {f"r-{run}-{i}": f"u{i}-{run}@ok2.test" for i in range(5)}
    publish(vhost, "bulk", [make_message(i, r) for i, r in {**strict, **relaxed}.items()])

    collector = ResultCollector(vhost)
    collector.collect({**strict, **relaxed}, timeout=60, settle=0.5)
    assert_each_final(collector.by_id, relaxed, "delivered")
    expired = assert_each_final(collector.by_id, strict, "expired")
    for result in expired.values():
        attempts = result["results"]
        assert len(attempts) >= 2, "the message was not retried"
        for attempt in attempts:
            assert attempt["phase"] == "tls" and attempt["tls"] is False
            assert "does not offer STARTTLS" in attempt["description"]
    deferred = [doc for _, doc in collector.raw if doc["status"] == "deferred"]
    assert deferred and {d["id"] for d in deferred} <= set(strict)
    assert not set(sinks.count_by_id()) & set(strict), "mail went out in plaintext"
    assert not any(e.rcpt in strict.values() for e in sinks.events())
