"""A source's limits (SPEC §7) with their codes, and SMTP smuggling: bare CR or LF in DATA is
refused by default, or made CRLF (`line_endings: normalize`) so that a smuggled `<LF>.<LF>`
is text of the one message, never the end of it and the start of another."""

import pytest

from tests.testbed.amqp import collect_results
from tests.testbed.checks import run_id
from tests.testbed.submit import ENV, message, queued_id, starttls_client, submit, submission_overrides

SMUGGLED = "MAIL FROM:<ceo@bank.test>\r\nRCPT TO:<{victim}>\r\nDATA\r\nFrom: ceo@bank.test\r\n\r\nwire money\r\n"


def _raw_data(client, sender: str, rcpt: str, data: bytes) -> tuple[int, str]:
    """MAIL, RCPT, then DATA with `data` written as it is (smtplib would fix its line ends)."""
    assert client.mail(sender)[0] == 250
    assert client.rcpt(rcpt)[0] == 250
    code, text = client.docmd("DATA")
    assert code == 354, text
    client.send(data + b"\r\n.\r\n")
    code, text = client.getreply()
    return code, text.decode()


def _vectors(run: str, victim: str) -> dict[str, bytes]:
    head = f"From: <orders@shop.test>\r\nMessage-ID: <{{}}-{run}@test>\r\nSubject: smuggling\r\n\r\n"
    smuggled = SMUGGLED.format(victim=victim)
    return {
        "bare-lf": (head.format("bare-lf") + "line one\nline two\r\n").encode(),
        "lf-dot-lf": (head.format("lf-dot-lf") + "hello\n.\n" + smuggled).encode(),
        "cr-dot-cr": (head.format("cr-dot-cr") + "hello\r.\r" + smuggled).encode(),
    }


@pytest.mark.timeout(180)
def test_smuggling_vectors_refused_or_normalised(vhost, sinks, mta_config, start_mta, test_ca):
    legacy = {"users": [{"username": "legacy", "password_env": "WEBSHOP_SMTP_PASSWORD"}],
              "allow_ips": ["127.0.0.1/32"], "line_endings": "normalize"}
    overrides, ports = submission_overrides(test_ca, extra_sources={"legacy": legacy})
    start_mta(mta_config(**overrides), env=ENV)
    run = run_id()
    victim = f"victim-{run}@ok2.test"

    with starttls_client(test_ca, ports.starttls) as client:  # webshop: line_endings reject (the default)
        for name, data in _vectors(run, victim).items():
            code, text = _raw_data(client, "orders@shop.test", f"{name}-{run}@ok1.test", data)
            assert code == 550 and "5.6.0" in text, (name, code, text)

    accepted = {}
    with starttls_client(test_ca, ports.starttls, user="legacy") as client:
        for name, data in _vectors(run, victim).items():
            code, text = _raw_data(client, "orders@shop.test", f"{name}-n-{run}@ok1.test", data)
            assert code == 250, (name, code, text)
            accepted[queued_id(text)] = (name, data)

    results = collect_results(vhost, list(accepted), timeout=60, settle=2.0)
    for sid, (name, _) in accepted.items():
        assert [r["status"] for r in results[sid]] == ["delivered"], (name, results[sid])
    got = {a.rcpt: a for a in sinks.accepted()}
    assert victim not in got, "a smuggled second message never reaches anyone"
    assert sorted(got) == sorted(f"{name}-n-{run}@ok1.test" for name, _ in accepted.values())
    for sid, (name, data) in accepted.items():
        body = got[f"{name}-n-{run}@ok1.test"].data
        assert b"\r\n" in body and body.count(b"\n") == body.count(b"\r\n") == body.count(b"\r"), name
        assert b"wire money" in body or name == "bare-lf", "the smuggled text stays inside the one message"


@pytest.mark.timeout(180)
def test_size_recipient_and_rate_limits(vhost, sinks, mta_config, start_mta, test_ca):
    overrides, ports = submission_overrides(test_ca, max_recipients=3, max_message_size="20KB",
                                            max_message_rate="2/min")
    start_mta(mta_config(**overrides), env=ENV)
    run = run_id()
    with starttls_client(test_ca, ports.starttls) as client:
        code, text = client.mail("orders@shop.test", ["SIZE=30000"])
        assert code == 552 and "5.3.4" in text.decode(), text
        client.rset()
        assert client.mail("orders@shop.test")[0] == 250  # the first message of the rate
        for i in range(3):
            assert client.rcpt(f"r{i}-{run}@ok1.test")[0] == 250
        code, text = client.rcpt(f"r3-{run}@ok1.test")
        assert code == 452 and "4.5.3" in text.decode(), text
        big = message(f"big-{run}", body="x" * 76 + "\r\n") * 1 + b"y" * 76 * 300 + b"\r\n"
        code, text = client.data(big)
        assert code == 552 and "5.3.4" in text.decode(), text
        code, text = client.mail("orders@shop.test")  # the second
        assert code == 250, text
        client.rset()
        code, text = client.mail("orders@shop.test")  # the third in a minute: over 2/min
        assert code == 451 and "4.7.1" in text.decode(), text
    assert not [a for a in sinks.accepted() if run in a.rcpt]
