"""Attacks on SMTP submission (SPEC §7) with a real client against a real listener: each
test asserts what the listener does instead of what an attacker wants."""

import base64
import smtplib
import socket
import ssl
import sys
import time

import pytest

from tests.testbed.amqp import collect_results
from tests.testbed.checks import run_id
from tests.testbed.mtaproc import MtaProcess
from tests.testbed.submit import (ENV, PASSWORD, client_context, message, queued_id, starttls_client, submit,
                                  submission_overrides, without_trace)


def _plain(authz: bytes, user: bytes, password: bytes) -> str:
    return base64.b64encode(authz + b"\0" + user + b"\0" + password).decode()


def _raw_data(client, sender: str, rcpts, data: bytes) -> tuple[int, str]:
    assert client.mail(sender)[0] == 250
    for rcpt in rcpts:
        code, text = client.rcpt(rcpt)
        assert code == 250, (rcpt, code, text)
    code, text = client.docmd("DATA")
    assert code == 354, text
    client.send(data + b"\r\n.\r\n")
    code, text = client.getreply()
    return code, text.decode()


def _delivered(sinks, rcpt: str, want: int, timeout: float = 30.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = [a for a in sinks.accepted() if a.rcpt == rcpt]
        if len(got) >= want:
            return got
        time.sleep(0.5)
    return [a for a in sinks.accepted() if a.rcpt == rcpt]


@pytest.mark.timeout(180)
def test_the_same_message_sent_twice_on_purpose_is_delivered_twice(vhost, sinks, mta_config, start_mta, test_ca):
    """An application that sends the same alert twice (no Date:, no Message-ID:, as smtplib's
    sendmail does) within the hour gets 250 for both; the second must not be dropped."""
    overrides, ports = submission_overrides(test_ca)
    start_mta(mta_config(**overrides), env=ENV)
    run = run_id()
    rcpt = f"alert-{run}@ok1.test"
    data = f"From: <monitor@shop.test>\r\nTo: <{rcpt}>\r\nSubject: disk full\r\n\r\ndisk full\r\n".encode()
    ids = []
    for _ in range(2):
        with starttls_client(test_ca, ports.starttls) as client:
            code, text = submit(client, "monitor@shop.test", [rcpt], data)
            assert code == 250, text
            ids.append(queued_id(text))
        time.sleep(2)
    got = _delivered(sinks, rcpt, 2)
    assert len(got) == 2, f"two 250s ({ids}), {len(got)} delivered"


@pytest.mark.timeout(180)
def test_a_different_submission_never_shares_an_id(vhost, sinks, mta_config, start_mta, test_ca):
    """source, sender, recipients and content are hashed with NUL separators, but the content
    is not: recipients [a] with content "b\\0X" and recipients [a, b] with content "X" hash the
    same, and the second is answered 250 from the record without b ever getting it."""
    crm = {"users": [{"username": "crm", "password_env": "WEBSHOP_SMTP_PASSWORD"}], "allow_ips": ["127.0.0.1/32"]}
    overrides, ports = submission_overrides(test_ca, extra_sources={"crm": crm})  # crm: no sender_domains
    start_mta(mta_config(**overrides), env=ENV)
    run = run_id()
    a, b = f"first-{run}@ok1.test", f"second-{run}@ok2.test"
    body = message(f"nul-{run}", to=a)
    with starttls_client(test_ca, ports.starttls, user="crm") as client:
        code, text = _raw_data(client, "orders@shop.test", [a], b.encode() + b"\0\r\n" + body)
        assert code == 250, text
        first = queued_id(text)
        code, text = _raw_data(client, "orders@shop.test", [a, b], b"\r\n" + body)
        assert code == 250, text
        second = queued_id(text)
    got = _delivered(sinks, b, 1, timeout=20)
    assert first != second and len(got) == 1, f"ids {first} {second}; {b} got {len(got)}"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("header", [
    b"From: <orders@shop.test>\r\nFrom : <ceo@bank.test>\r\n",  # RFC 5322 4.5.6 obs-from: WSP before colon
    b"From: ceo@bank.test (CEO)@shop.test\r\n",  # addr-spec, comment, trailing junk
], ids=["second-obsolete-from", "junk-after-comment"])
def test_from_header_forms_that_name_another_domain_are_refused(vhost, sinks, mta_config, start_mta, test_ca,
                                                                header):
    overrides, ports = submission_overrides(test_ca)
    start_mta(mta_config(**overrides), env=ENV)
    run = run_id()
    data = header + f"To: <x-{run}@ok1.test>\r\nSubject: pay\r\n\r\nwire money\r\n".encode()
    with starttls_client(test_ca, ports.starttls) as client:
        code, text = _raw_data(client, "orders@shop.test", [f"x-{run}@ok1.test"], data)
    assert code == 550, (code, text)


@pytest.mark.timeout(180)
def test_a_client_cannot_fill_the_log_with_tracebacks(vhost, mta_config, start_mta, test_ca):
    """An unauthenticated client (after TLS) answers AUTH challenges with overlong lines:
    each is a failed login (the connection ends after three), never a traceback."""
    overrides, ports = submission_overrides(test_ca)
    mta = start_mta(mta_config(**overrides), env=ENV)
    before = mta.log_text().count("Traceback")
    per_connection = []
    for _ in range(3):
        replies = []
        with starttls_client(test_ca, ports.starttls, source_address="127.0.0.9", login=False) as client:
            try:
                for _ in range(10):
                    code, _ = client.docmd("AUTH", "LOGIN")
                    assert code == 334
                    client.send(b"A" * 5000 + b"\r\n")
                    replies.append(client.getreply()[0])
            except smtplib.SMTPServerDisconnected:
                pass
        per_connection.append(replies)
    time.sleep(1)
    assert per_connection == [[500, 500, 421]] * 3, per_connection
    assert mta.log_text().count("Traceback") - before == 0


@pytest.mark.timeout(180)
def test_idle_unauthenticated_connections_cannot_starve_a_source(vhost, sinks, mta_config, test_ca):
    """Connections that never log in: at most 50 from one address (then 421), ten RSETs or
    refused MAILs before a source is known end one; under a 256-descriptor limit the
    source's own client still gets in."""
    overrides, ports = submission_overrides(test_ca)
    cfg = mta_config(**overrides)
    mta = MtaProcess(cfg, env=ENV, log_path=cfg + ".fd.log",
                     cmd=["prlimit", "--nofile=256:256", sys.executable, "-m", "mta", "run", cfg])
    held, greetings = [], []
    try:
        mta.start()
        mta.wait_ready(vhost, timeout=60, require_consumer=True)
        for _ in range(300):  # from an address no source knows
            s = socket.create_connection(("127.0.0.1", ports.starttls), timeout=5, source_address=("127.0.0.9", 0))
            held.append(s)
            greetings.append(s.recv(1000)[:3])
        assert greetings.count(b"220") == 50 and greetings.count(b"421") == 250, set(greetings)
        s = held[0]
        s.sendall(b"EHLO x\r\n" + b"RSET\r\n" * 2000)
        answered = b""
        s.settimeout(10)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            answered += chunk
        assert answered.count(b"250 2.0.0 OK") == 10 and answered.rstrip().endswith(b"closing the connection"), \
            answered[-200:]
        run = run_id()
        rcpt = f"starved-{run}@ok1.test"
        with starttls_client(test_ca, ports.starttls) as client:
            code, text = submit(client, "orders@shop.test", [rcpt], message(f"st-{run}", to=rcpt))
        assert code == 250, f"the source, with {len(held)} connections from 127.0.0.9 tried: {text}"
    finally:
        for s in held:
            s.close()
        mta.terminate(timeout=30)


@pytest.mark.timeout(180)
def test_what_holds_up(vhost, sinks, mta_config, start_mta, test_ca):
    """AUTH odd encodings, STARTTLS and RSET state, passwords in the log, bytes relayed."""
    legacy = {"users": [{"username": "legacy", "password_env": "WEBSHOP_SMTP_PASSWORD"}],
              "allow_ips": ["127.0.0.1/32"], "line_endings": "normalize"}
    overrides, ports = submission_overrides(test_ca, extra_sources={"legacy": legacy})
    mta = start_mta(mta_config(**overrides), env=ENV)
    run = run_id()
    pw = PASSWORD.encode()

    # AUTH PLAIN odd forms: the authcid is what is checked, never the authzid
    with starttls_client(test_ca, ports.starttls, login=False) as client:
        assert client.docmd("AUTH", "PLAIN " + _plain(b"webshop", b"", pw))[0] == 535
        assert client.docmd("AUTH", "PLAIN " + _plain(b"", b"webshop\xff", pw))[0] == 535
        assert client.docmd("AUTH", "PLAIN " + _plain(b"", b"webshop", pw + b"\0"))[0] == 501  # 4 parts
        assert client.docmd("AUTH", "PLAIN " + base64.b64encode(b"webshop\0" + pw).decode())[0] == 501
        assert client.docmd("AUTH", "PLAIN " + _plain(b"", b"webshop", pw) + "=")[0] == 501
        assert client.mail("orders@shop.test")[0] == 530

    # authzid of another name: logs in as the authcid's source, nothing more
    with starttls_client(test_ca, ports.starttls, login=False) as client:
        assert client.docmd("AUTH", "PLAIN " + _plain(b"legacy", b"webshop", pw))[0] == 235
        assert client.mail("orders@bank.test")[0] == 553  # still webshop's sender_domains
        # RSET and EHLO keep the login (RFC 4954), a STARTTLS inside TLS is not offered
        assert client.rset()[0] == 250
        client.ehlo("again.test")
        assert not client.has_extn("starttls")
        assert client.mail("orders@shop.test")[0] == 250
    # AUTH, then (on the plain listener) nothing: no AUTH in clear at all
    with smtplib.SMTP("127.0.0.1", ports.plain, timeout=30) as client:
        client.ehlo("x.test")
        assert client.docmd("AUTH", "PLAIN " + _plain(b"", b"webshop", pw))[0] == 538
        assert client.mail("orders@shop.test")[0] == 530

    # LOGIN with an initial response, and the password never in the log
    with starttls_client(test_ca, ports.starttls, login=False) as client:
        code, _ = client.docmd("AUTH", "LOGIN " + base64.b64encode(b"webshop").decode())
        assert code == 334
        assert client.docmd(base64.b64encode(pw).decode())[0] == 235
    with starttls_client(test_ca, ports.starttls, login=False, source_address="127.0.0.8") as client:
        client.docmd("AUTH", "PLAIN " + _plain(b"", b"webshop", b"s3cret-guess"))
    log = mta.log_text()
    for secret in (PASSWORD, "s3cret-guess", base64.b64encode(pw).decode(),
                   _plain(b"", b"webshop", pw), _plain(b"", b"webshop", b"s3cret-guess")):
        assert secret not in log, secret

    # bytes: 8-bit non-UTF-8, NUL, dot-stuffed lines, a lone dot after LF (normalize)
    rcpt1, rcpt2 = f"bytes-{run}@ok1.test", f"dots-{run}@ok1.test"
    head = f"From: <orders@shop.test>\r\nTo: <{rcpt1}>\r\nMessage-ID: <b-{run}@test>\r\n\r\n".encode()
    eight = head + b"caf\xe9 \xff\xfe\r\nNUL:\x00:\r\n.\r\n..two\r\n...three\r\nlast"
    stuffed = eight.replace(b"\r\n.", b"\r\n..")
    with starttls_client(test_ca, ports.starttls) as client:
        code, text = _raw_data(client, "orders@shop.test", [rcpt1], stuffed)
        assert code == 250, text
        sid1 = queued_id(text)
    smuggle = head.replace(rcpt1.encode(), rcpt2.encode()) + b"one\r\n.\nMAIL FROM:<ceo@bank.test>\r\nend\n.\r\nx"
    with starttls_client(test_ca, ports.starttls, user="legacy") as client:
        code, text = _raw_data(client, "orders@shop.test", [rcpt2], smuggle)
        assert code == 250, text
        sid2 = queued_id(text)
    results = collect_results(vhost, [sid1, sid2], timeout=60, settle=1.0)
    assert [r["status"] for r in results[sid1]] == ["delivered"], results[sid1]
    assert [r["status"] for r in results[sid2]] == ["delivered"], results[sid2]
    got = {a.rcpt: a for a in sinks.accepted()}
    assert without_trace(got[rcpt1].data).rstrip(b"\r\n") == eight, got[rcpt1].data[-120:]
    # "<CRLF>." then a bare LF: the line starts with a dot, so it is unstuffed (RFC 5321 4.5.2),
    # then the LF made CRLF; "<LF>.<CRLF>" ends nothing and stays text of the one message
    unstuffed = smuggle.replace(b"\r\n.\n", b"\r\n\n")
    assert without_trace(got[rcpt2].data).rstrip(b"\r\n") == unstuffed.replace(b"\r\n", b"\n").replace(
        b"\n", b"\r\n"), got[rcpt2].data[-120:]


def _peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.timeout(300)
def test_memory_for_one_message_does_not_grow_with_its_recipients(vhost, sinks, mta_config, start_mta, test_ca):
    """One JSON document per recipient, each with the whole message: published a chunk at a
    time, each confirmed before the next is made. A 4 MiB message to 100 recipients takes
    no more memory at its peak than the same message to 20 (before: 100 copies at once, and
    at the defaults, 50 MiB to 100 recipients, some 10 GiB). The engine in the same process
    takes what it consumes up to `prefetch_bytes`, kept small here to see the listener's part."""
    overrides, ports = submission_overrides(test_ca)
    mta = start_mta(mta_config(broker={"prefetch_bytes": 8 * 1024 * 1024}, **overrides), env=ENV)
    run = run_id()
    line = b"x" * 998 + b"\r\n"
    data = (f"From: <orders@shop.test>\r\nMessage-ID: <big-{run}@test>\r\nSubject: big\r\n\r\n").encode() + \
        line * (4 * 1024 * 1024 // len(line))
    peaks = []
    for n in (20, 100):
        rcpts = [f"big{n}-{i}-{run}@ok1.test" for i in range(n)]
        with starttls_client(test_ca, ports.starttls) as client:
            code, text = _raw_data(client, "orders@shop.test", rcpts, data)
        assert code == 250, text
        _delivered(sinks, rcpts[-1], 1, timeout=120)
        peaks.append(_peak_rss_mib(mta.pid))
    assert peaks[1] - peaks[0] < 64, f"peak RSS after 20 recipients {peaks[0]:.0f} MiB, after 100 {peaks[1]:.0f} MiB"


@pytest.mark.timeout(120)
def test_a_password_sent_after_a_refused_auth_is_never_logged(vhost, mta_config, start_mta, test_ca):
    """A client that pipelines AUTH LOGIN's answers where AUTH is refused (538 before TLS, 504,
    503) has them read as commands: aiosmtpd logs each "unrecognised: <LINE>" at WARNING,
    upper-cased. Base64 upper-cased is undone by trying 16 cases per 4-character group."""
    overrides, ports = submission_overrides(test_ca)
    mta = start_mta(mta_config(**overrides), env=ENV)
    b64 = base64.b64encode(PASSWORD.encode())
    for port in (ports.plain, ports.starttls):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.recv(1000)
        s.sendall(b"EHLO x\r\nAUTH LOGIN\r\n" + base64.b64encode(b"webshop") + b"\r\n" + b64 + b"\r\nQUIT\r\n")
        s.settimeout(10)
        answered = b""
        while b"221" not in answered:
            chunk = s.recv(4000)
            if not chunk:
                break
            answered += chunk
        s.close()
        assert b"538" in answered, answered
    time.sleep(0.5)
    assert b64.decode().upper() not in mta.log_text()
