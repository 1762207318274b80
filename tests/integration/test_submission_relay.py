"""Never an open relay (SPEC §7): each way in that must be shut is tried with a real client,
and what is refused is refused with its code and never reaches the broker or a sink."""

import base64
import smtplib
import socket

import pytest

from tests.testbed.amqp import collect_results, queue_info
from tests.testbed.checks import run_id
from tests.testbed.tls import assert_no_secret
from tests.testbed.submit import (ENV, PASSWORD, message, queued_id, starttls_client, submit,
                                  submission_overrides, swaks, without_trace)


def _plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def _refused_mail(client: smtplib.SMTP, sender: str = "orders@shop.test") -> int:
    code, _ = client.mail(sender)
    return code


@pytest.mark.timeout(180)
def test_the_open_relay_matrix(vhost, sinks, mta_config, start_mta, test_ca):
    overrides, ports = submission_overrides(test_ca)
    mta = start_mta(mta_config(**overrides), env=ENV)
    run = run_id()
    foreign = f"victim-{run}@ok2.test"

    # no AUTH at all, after STARTTLS: nothing may be sent, anywhere
    with starttls_client(test_ca, ports.starttls, login=False) as client:
        assert _refused_mail(client) == 530
        assert client.rcpt(foreign)[0] == 503  # no MAIL, no RCPT

    # a wrong password: 535, and still no MAIL
    with starttls_client(test_ca, ports.starttls, login=False) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login("webshop", "not the password")
        assert refused.value.smtp_code == 535
        assert _refused_mail(client) == 530

    # the right password from an address outside the source's allow_ips: refused like a wrong one
    with starttls_client(test_ca, ports.starttls, source_address="127.0.0.2", login=False) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login("webshop", PASSWORD)
        assert refused.value.smtp_code == 535
        assert _refused_mail(client) == 530

    # auth: none from outside its allowlist (127.0.0.4 is not the printer's 127.0.0.3)
    with smtplib.SMTP("127.0.0.1", ports.plain, source_address=("127.0.0.4", 0), timeout=30) as client:
        client.ehlo("client.test")
        assert not client.has_extn("auth"), "no AUTH offered without TLS"
        assert _refused_mail(client, "printer@office.test") == 530

    # AUTH pipelined with the transaction behind it: the failed login lets nothing through
    with starttls_client(test_ca, ports.starttls, login=False) as client:
        client.send(f"AUTH PLAIN {_plain('webshop', 'pipelined-guess-7')}\r\nMAIL FROM:<orders@shop.test>\r\n"
                    f"RCPT TO:<{foreign}>\r\nDATA\r\n".encode())
        replies = [client.getreply()[0] for _ in range(4)]
        assert replies == [535, 530, 503, 503], replies

    # an authenticated source may send for its own domains only: envelope and From:
    with starttls_client(test_ca, ports.starttls) as client:
        code, text = client.mail("someone@bank.test")
        assert code == 553 and "5.7.1" in text.decode(), text
        code, text = submit(client, "orders@shop.test", [foreign], message(f"forged-{run}", sender="ceo@bank.test"))
        assert code == 550 and "5.7.1" in text, text

    # auth: none from inside its allowlist: accepted, and sent (with the printer's lane)
    with smtplib.SMTP("127.0.0.1", ports.plain, source_address=("127.0.0.3", 0), timeout=30) as client:
        client.ehlo("printer.test")
        data = message(f"scan-{run}", sender="printer@office.test", to=f"scan-{run}@ok1.test")
        code, text = submit(client, "printer@office.test", [f"scan-{run}@ok1.test"], data)
        assert code == 250, text
        printed = queued_id(text)

    # swaks, authenticated over STARTTLS: accepted
    out = swaks("--server", f"127.0.0.1:{ports.starttls}", "--tls", "--auth", "PLAIN", "--auth-user", "webshop",
                "--auth-password", PASSWORD, "--from", "orders@shop.test", "--to", f"swaks-{run}@ok3.test",
                "--header", f"Message-ID: <swaks-{run}@test>", "--header", "From: <orders@shop.test>",
                "--body", "sent by swaks")
    assert out.returncode == 0, out.stdout + out.stderr
    swaksed = queued_id(out.stdout)

    results = collect_results(vhost, [printed, swaksed], timeout=60, settle=2.0)
    assert [r["status"] for r in results[printed]] == ["delivered"], results[printed]
    assert results[printed][0]["source"] == "printer"
    assert [r["status"] for r in results[swaksed]] == ["delivered"], results[swaksed]
    got = {a.rcpt: a for a in sinks.accepted()}
    assert foreign not in got, "nothing refused reached a receiver"
    assert set(got) == {f"scan-{run}@ok1.test", f"swaks-{run}@ok3.test"}, sorted(got)
    assert without_trace(got[f"scan-{run}@ok1.test"].data) == data
    assert queue_info(vhost, "mta.invalid")["messages"] == 0
    log = mta.log_text()
    assert "AUTH failed for user 'webshop' from 127.0.0.1" in log, "the user name is logged"
    for password in (PASSWORD, "not the password", "pipelined-guess-7"):
        assert_no_secret([log], "webshop", password)


@pytest.mark.timeout(120)
def test_three_failed_logins_close_the_connection_with_a_growing_delay(vhost, mta_config, start_mta, test_ca):
    overrides, ports = submission_overrides(test_ca)
    start_mta(mta_config(**overrides), env=ENV)
    import time

    with starttls_client(test_ca, ports.starttls, login=False) as client:
        times = []
        for attempt in range(3):
            started = time.monotonic()
            code, text = client.docmd("AUTH", f"PLAIN {_plain('webshop', f'guess{attempt}')}")
            times.append(time.monotonic() - started)
            assert code == (535 if attempt < 2 else 421), (attempt, code, text)
        with pytest.raises((smtplib.SMTPServerDisconnected, ConnectionError, socket.error)):
            client.docmd("NOOP")
    assert times[0] >= 0.9 and times[1] >= 1.9 and times[2] >= 2.9, times  # 1 s, 2 s, 3 s
