"""SMTPUTF8 only when needed and offered (RFC 6531): a message with UTF-8 header fields
(RFC 6532) or a non-ASCII envelope local part goes with the SMTPUTF8 MAIL parameter to a
receiver that offers it; to one that offers 8BITMIME but not SMTPUTF8 it bounces at once,
unsent (5.6.9 for header fields, 5.6.7 for an address: neither can be downgraded), while a
message that is 8-bit in its body alone goes there with BODY=8BITMIME."""

from __future__ import annotations

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.dns import bulk_ip

OFFERS, LACKS = 88, 89  # d88.test offers SMTPUTF8 (and 8BITMIME); d89.test 8BITMIME only


def _mime(msg_id: str, subject: str = "hello", body: str = "plain ascii\n") -> str:
    return (f"From: <sender@sender.test>\nTo: <someone@example.test>\nMessage-ID: <{msg_id}@test>\n"
            f"Subject: {subject}\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
            f"Content-Transfer-Encoding: 8bit\n\n{body}")


def _messages(run: str, d: int) -> dict[str, dict[str, tuple[str, str]]]:
    """{kind: {id: (recipient, mime)}}: UTF-8 header fields, a non-ASCII local part, an 8-bit body."""
    return {
        "header": {f"h{d}-{run}-{i}": (f"head{i}-{run}@d{d}.test", _mime(f"h{d}-{run}-{i}", subject="Grüße aus Köln"))
                   for i in range(2)},
        "address": {f"u{d}-{run}-{i}": (f"jörg{i}-{run}@d{d}.test", _mime(f"u{d}-{run}-{i}")) for i in range(2)},
        "body": {f"b{d}-{run}-{i}": (f"body{i}-{run}@d{d}.test", _mime(f"b{d}-{run}-{i}", body="Grüße, 5 €\n"))
                 for i in range(2)},
    }


def _params(accepted) -> set[str]:
    """The MAIL parameters a sink was sent, but SIZE (always there: the sinks offer it)."""
    return {o for o in accepted.mail_options if not o.startswith("SIZE=")}


@pytest.mark.timeout(120)
def test_smtputf8_when_needed_and_offered(vhost, sinks, start_mta, mta_config):
    sinks.set_smtputf8(bulk_ip(LACKS), False)
    start_mta(mta_config())
    run = run_id()
    sent = {d: _messages(run, d) for d in (OFFERS, LACKS)}
    everything = {i: m for d in sent.values() for kind in d.values() for i, m in kind.items()}
    publish(vhost, "bulk", [make_message(i, rcpt, mime=mime) for i, (rcpt, mime) in everything.items()])

    results = ResultCollector(vhost).collect(everything, timeout=60, settle=0.5)
    offers, lacks = sent[OFFERS], sent[LACKS]
    assert_each_final(results, {**offers["header"], **offers["address"], **offers["body"], **lacks["body"]},
                      "delivered")
    for kind, (code, enhanced) in (("header", (550, "5.6.9")), ("address", (553, "5.6.7"))):
        for final in assert_each_final(results, lacks[kind], "bounced").values():
            last = final["results"][-1]
            assert (final["attempts"], last["code"], last["enhanced"]) == (1, code, enhanced), final
            assert "SMTPUTF8" in last["description"], last

    # What each receiver was sent: only what it can take, and SMTPUTF8 only where it was needed.
    received = {a.msg_id: a for a in sinks.accepted()}
    assert sorted(received) == sorted([*offers["header"], *offers["address"], *offers["body"], *lacks["body"]])
    for i in offers["header"]:
        assert _params(received[i]) == {"BODY=8BITMIME", "SMTPUTF8"}, received[i].mail_options
        assert "Subject: Grüße aus Köln".encode() in received[i].data  # as written: no downgrade
    for i, (rcpt, _) in offers["address"].items():
        assert _params(received[i]) == {"SMTPUTF8"} and received[i].rcpt == rcpt, received[i]
    for i in [*offers["body"], *lacks["body"]]:
        assert _params(received[i]) == {"BODY=8BITMIME"}, received[i].mail_options
        assert "Grüße, 5 €".encode() in received[i].data
    assert {a.sink for a in received.values() if a.msg_id in lacks["body"]} == {bulk_ip(LACKS)}
