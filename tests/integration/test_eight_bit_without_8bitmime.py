"""A receiver that does not offer 8BITMIME (RFC 6152) gets only 7-bit content: an 8-bit body
arrives re-encoded quoted-printable and reads the same; a message with 8-bit header fields
(which only SMTPUTF8 carries, RFC 6532) bounces with 5.6.9 at once and is not sent."""

from __future__ import annotations

import email
import email.policy

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.dns import bulk_ip

TEXT = "Grüße aus Köln: 5 € für café crème.\n.a line that starts with a dot\n"


def _mime(msg_id: str, rcpt: str, subject: str = "hello") -> str:
    return (f"From: <sender@sender.test>\nTo: <{rcpt}>\nMessage-ID: <{msg_id}@test>\nSubject: {subject}\n"
            f"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n{TEXT}")


@pytest.mark.timeout(120)
def test_8bit_content_to_a_receiver_without_8bitmime(vhost, sinks, start_mta, mta_config):
    ip = bulk_ip(85)
    sinks.set_eight_bit_mime(ip, False)
    try:
        start_mta(mta_config())
        run = run_id()
        body = {f"8b-{run}-{i}": f"user{i}-{run}@d85.test" for i in range(4)}
        header = {f"8h-{run}-{i}": f"head{i}-{run}@d85.test" for i in range(2)}
        publish(vhost, "bulk", [make_message(i, r, mime=_mime(i, r)) for i, r in body.items()]
                + [make_message(i, r, mime=_mime(i, r, subject="Grüße")) for i, r in header.items()])

        results = ResultCollector(vhost).collect({**body, **header}, timeout=60, settle=0.5)
        assert_each_final(results, body, "delivered")
        for i, final in assert_each_final(results, header, "bounced").items():
            last = final["results"][-1]
            assert (final["attempts"], last["code"], last["enhanced"]) == (1, 550, "5.6.9"), final
            assert "8-bit header" in last["description"], last

        accepted = {a.msg_id: a for a in sinks.accepted() if a.sink == ip}
        assert sorted(accepted) == sorted(body)
        for a in accepted.values():
            assert a.data.isascii(), "8-bit content sent to a receiver without 8BITMIME"
            assert not any("BODY" in o.upper() for o in a.mail_options), a.mail_options
            message = email.message_from_bytes(a.data, policy=email.policy.default)
            assert message["Content-Transfer-Encoding"] == "quoted-printable"
            assert message.get_content().replace("\r\n", "\n") == TEXT
    finally:
        sinks.set_eight_bit_mime(ip, True)
