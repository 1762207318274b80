"""RFC 2920 pipelining across transactions: when a connection's next message is ready, its
MAIL, RCPT and DATA go out in the same write as the content of the message before it.

Each scenario sends to one destination over one connection (connection_limit 1), with the
receiver's reply to the end of the content delayed a little so that the next messages are
queued by then; the sink notes every content that arrived together with the next
transaction's commands. Each transaction must still end on its own: a refused content or
recipient does not touch its neighbour, a connection lost after a content costs the message
pipelined behind it nothing but a new connection, and a receiver without PIPELINING gets
one transaction at a time.
"""

from __future__ import annotations

import collections

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.dns import bulk_ip
from tests.testbed.ledger import Ledger

ONE_CONNECTION = {"connection_limit": 1}


def _publish(vhost, kinds: list[str], domain: str, run: str, **extra) -> dict[str, tuple[str, str]]:
    """Publish one message per kind ("ok", "spam", "hard", "drop"), in order, to ``domain``;
    returns {id: (kind, recipient)}."""
    out = {}
    docs = []
    for n, kind in enumerate(kinds):
        msg_id = f"pl-{kind}-{run}-{n}"
        local = f"user{n}-{run}" if kind == "ok" else f"{kind}-{n}-{run}"
        out[msg_id] = (kind, f"{local}@{domain}")
        docs.append(make_message(msg_id, out[msg_id][1], **(extra if kind == "drop" else {})))
    publish(vhost, "bulk", docs)
    return out


def _of(msgs: dict, kind: str) -> list[str]:
    return [i for i, (k, _) in msgs.items() if k == kind]


@pytest.mark.timeout(120)
def test_refused_content_and_recipient_leave_the_pipelined_neighbour_alone(vhost, sinks, start_mta, mta_config):
    ip = bulk_ip(80)
    sinks.set_data_delay(ip, 0.05)
    start_mta(mta_config(domains={"d80.test": {**ONE_CONNECTION, "max_deliveries_per_connection": 7}}))
    run = run_id()
    kinds = ["ok", "ok", "spam", "ok", "hard", "ok", "spam", "hard", "ok", "ok"] * 4
    msgs = _publish(vhost, kinds, "d80.test", run)

    coll = ResultCollector(vhost)
    results = coll.collect(list(msgs), timeout=90, settle=0.5)
    assert_each_final(results, _of(msgs, "ok"), "delivered")
    for kind, phase, code in (("spam", "message", 554), ("hard", "rcpt", 550)):
        for i, res in assert_each_final(results, _of(msgs, kind), "bounced").items():
            assert res["attempts"] == 1, res
            last = res["results"][-1]
            assert (last["phase"], last["code"]) == (phase, code), last

    counts = sinks.count_by_id()
    assert {i: counts.get(i) for i in _of(msgs, "ok")} == {i: 1 for i in _of(msgs, "ok")}
    assert not any(i in counts for i in _of(msgs, "spam") + _of(msgs, "hard"))
    attempts = sinks.rcpt_attempts()
    assert all(attempts.get(msgs[i][1]) == 1 for i in _of(msgs, "hard")), attempts

    pipelined = [p for p in sinks.pipelined() if p[0] == ip]
    behind = {content: rcpt for _, content, rcpt in pipelined}
    kind_of_rcpt = {rcpt: kind for kind, rcpt in msgs.values()}
    spam_followed = [i for i in _of(msgs, "spam") if i in behind]
    assert spam_followed, f"no refused content had the next transaction pipelined behind it: {pipelined}"
    assert any(kind_of_rcpt.get(rcpt) == "hard" for rcpt in behind.values()), \
        f"no refused recipient was pipelined behind a content: {pipelined}"

    # max_deliveries_per_connection still ends each session after 7 transactions
    per_session = collections.Counter(a.peer for a in sinks.accepted() if a.sink == ip)
    assert max(per_session.values()) <= 7, per_session
    assert sinks.connections()[ip] >= len(kinds) // 7, sinks.connections()


@pytest.mark.timeout(120)
def test_connection_lost_after_a_content_costs_the_next_message_nothing(vhost, sinks, start_mta, mta_config):
    ip = bulk_ip(81)
    sinks.set_data_delay(ip, 0.05)
    start_mta(mta_config(domains={"d81.test": ONE_CONNECTION}))
    run = run_id()
    kinds = ["ok"] * 6 + ["drop"] + ["ok"] * 6 + ["drop"] + ["ok"] * 6
    msgs = _publish(vhost, kinds, "d81.test", run, maxdelivertime=6)
    ledger = Ledger("pipelined behind a dropped connection", bound=0)
    ledger.add(_of(msgs, "ok"), "delivered")
    ledger.add(_of(msgs, "drop"), "expired")

    coll = ResultCollector(vhost)
    results = coll.collect(ledger.ids, timeout=90, settle=0.5)
    ledger.check(results, sinks.count_by_id(), sink_duplicates_allowed=0)

    behind = {content: rcpt for sink, content, rcpt in sinks.pipelined() if sink == ip}
    followed = [i for i in _of(msgs, "drop") if i in behind]
    assert followed, f"no dropped content had the next transaction pipelined behind it: {behind}"
    by_rcpt = {rcpt: i for i, (_, rcpt) in msgs.items()}
    for i in followed:
        nxt = by_rcpt[behind[i]]
        # Its commands went out, the connection was lost before any reply to them: it
        # was never begun, so it goes on a new connection without a failed attempt.
        if msgs[nxt][0] == "ok":
            assert [r["status"] for r in results[nxt]] == ["delivered"], results[nxt]
            assert results[nxt][0]["attempts"] == 1, results[nxt]
    assert len([e for e in sinks.events() if e.kind == "drop" and e.sink == ip]) >= 2


@pytest.mark.timeout(120)
def test_receiver_without_pipelining_gets_one_transaction_at_a_time(vhost, sinks, start_mta, mta_config):
    ip = bulk_ip(82)
    sinks.set_pipelining(ip, False)
    sinks.set_data_delay(ip, 0.05)
    start_mta(mta_config(domains={"d82.test": ONE_CONNECTION}))
    run = run_id()
    kinds = ["ok", "spam", "ok", "hard", "ok", "ok"] * 3
    msgs = _publish(vhost, kinds, "d82.test", run)

    coll = ResultCollector(vhost)
    results = coll.collect(list(msgs), timeout=90, settle=0.5)
    assert_each_final(results, _of(msgs, "ok"), "delivered")
    assert_each_final(results, _of(msgs, "spam") + _of(msgs, "hard"), "bounced")
    counts = sinks.count_by_id()
    assert all(counts.get(i) == 1 for i in _of(msgs, "ok")), counts
    assert not [p for p in sinks.pipelined() if p[0] == ip]
