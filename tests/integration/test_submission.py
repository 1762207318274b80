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


@pytest.mark.timeout(120)
def test_metrics_and_status_show_each_source(vhost, sinks, mta_config, start_mta, test_ca):
    import json
    import subprocess
    import sys
    import urllib.request

    from tests.testbed.util import free_port

    overrides, ports = submission_overrides(test_ca)
    metrics_port = free_port()
    config = mta_config(metrics={"port": metrics_port}, **overrides)
    start_mta(config, env=ENV)
    run = run_id()
    with starttls_client(test_ca, ports.starttls) as client:
        code, text = submit(client, "orders@shop.test", [f"m-{run}@ok1.test"], message(f"m-{run}"))
        assert code == 250, text
    with starttls_client(test_ca, ports.starttls, login=False) as client:
        assert client.mail("orders@shop.test")[0] == 530
        assert client.docmd("AUTH", "PLAIN " + _plain("webshop", "wrong"))[0] == 535

    scrape = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    for line in ['mta_submission_messages_total{source="webshop"} 1.0',
                 'mta_submission_recipients_total{source="webshop"} 1.0',
                 'mta_submission_refused_total{reason="no_source",source="(unknown)"} 1.0',
                 'mta_submission_auth_failures_total{source="webshop"} 1.0',
                 "mta_submission_broker_up 1.0"]:
        assert line in scrape, line

    done = subprocess.run([sys.executable, "-m", "mta", "status", "--json", "--config", config],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (mta,) = json.loads(done.stdout)["mtas"]
    sources = {s["source"]: s for s in mta["submission"]["sources"]}
    assert sources["webshop"]["accepted"] == 1
    assert sources["webshop"]["last_minute"] == {"accepted": 1, "auth_failures": 1, "refused": 1}
    assert sources["printer"]["accepted"] == 0
    assert mta["submission"]["unknown"] == {"refused": 1}
    assert [l["tls"] for l in mta["submission"]["listeners"]] == ["starttls", "implicit", "none"]
    text = subprocess.run([sys.executable, "-m", "mta", "status", "--config", config],
                          capture_output=True, text=True, timeout=60).stdout
    assert "source webshop" in text and "last 60 s: accepted 1, refused 1, failed logins 1" in text, text
