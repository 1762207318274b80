"""SMTP submission (SPEC §7) with real clients, the real broker and the sinks: what a source
submits over STARTTLS or implicit TLS arrives byte for byte, behind our Received: header,
with the source and its tags in every result."""

import smtplib
import ssl

import pytest

from tests.testbed.amqp import collect_results
from tests.testbed.checks import run_id
from tests.testbed.submit import (ENV, PASSWORD, client_context, message, queued_id, starttls_client, submit,
                                  submission_overrides, without_trace)


@pytest.mark.timeout(120)
def test_starttls_and_implicit_tls_submissions_arrive_byte_for_byte(vhost, sinks, mta_config, start_mta, test_ca):
    overrides, ports = submission_overrides(test_ca)
    start_mta(mta_config(**overrides), env=ENV)
    run = run_id()
    sent = {}

    with starttls_client(test_ca, ports.starttls) as client:
        for i in range(3):  # one connection, several messages
            data = message(f"st-{run}-{i}", to=f"st{i}-{run}@ok1.test")
            code, text = submit(client, "orders@shop.test", [f"st{i}-{run}@ok1.test"], data)
            assert code == 250, text
            sent[queued_id(text)] = (data, [f"st{i}-{run}@ok1.test"])

    with smtplib.SMTP_SSL("127.0.0.1", ports.implicit, context=client_context(test_ca), timeout=30) as client:
        client.ehlo("client.test")
        assert client.has_extn("auth"), "AUTH is offered on an implicit-TLS listener"
        assert not client.has_extn("starttls")
        client.login("webshop", PASSWORD)
        data = message(f"im-{run}", to=f"a-{run}@ok2.test")
        rcpts = [f"a-{run}@ok2.test", f"b-{run}@ok3.test"]
        code, text = submit(client, "orders@shop.test", rcpts, data)
        assert code == 250, text
        sent[queued_id(text)] = (data, rcpts)

    results = collect_results(vhost, list(sent), timeout=60, settle=1.0)
    for sid, (data, rcpts) in sent.items():
        finals = [r for r in results[sid] if r["status"] != "deferred"]
        assert sorted(r["recipient"] for r in finals) == sorted(rcpts), results[sid]
        for r in finals:
            assert r["status"] == "delivered", r
            assert r["source"] == "webshop" and r["tags"] == ["webshop"], r
            assert r["id"] == sid
    got = {}
    for a in sinks.accepted():
        got.setdefault(a.rcpt, []).append(a)
    for sid, (data, rcpts) in sent.items():
        for rcpt in rcpts:
            assert len(got.get(rcpt, [])) == 1, (rcpt, got.get(rcpt))
            arrived = got[rcpt][0]
            assert arrived.mail_from == "orders@shop.test"
            assert without_trace(arrived.data) == data, "relayed byte for byte behind one Received: header"
            assert f"id {sid}".encode() in arrived.data[:400]


@pytest.mark.timeout(60)
def test_no_auth_offered_before_starttls(vhost, mta_config, start_mta, test_ca):
    overrides, ports = submission_overrides(test_ca)
    start_mta(mta_config(**overrides), env=ENV)
    with smtplib.SMTP("127.0.0.1", ports.starttls, timeout=30) as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls") and not client.has_extn("auth")
        assert client.has_extn("pipelining")
        code, _ = client.docmd("AUTH", "PLAIN " + _plain("webshop", PASSWORD))
        assert code == 538  # encryption required: the password never crosses in clear
        code, text = client.mail("orders@shop.test")
        assert code == 530, text
    ctx = ssl.create_default_context(cafile=test_ca.ca_file)
    with smtplib.SMTP("127.0.0.1", ports.starttls, timeout=30) as client:
        client.starttls(context=ctx)
        client.ehlo("client.test")
        assert client.has_extn("auth")


def _plain(user: str, password: str) -> str:
    import base64

    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()
