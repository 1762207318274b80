"""Scenario 7 of the fault suite: SMTP smuggling and injection.

Bodies carrying bare LF, bare CR, <LF>.<CR><LF> and friends, lines that start with a dot
or are a lone dot: the sink must receive exactly one message per id, equal to the body
with its line ends made CRLF (dot stuffing undone by the sink, so stuffing was done once
and right), and no smuggled second transaction. Lines over 998 octets arrive re-encoded
(quoted-printable) with the same decoded content and no line on the wire longer than 998.
CR, LF or NUL in an envelope field is bad input: one `invalid` result and nothing on the
wire.
"""

from __future__ import annotations

import email
import email.policy

import pytest

from tests.testbed.amqp import ResultCollector, publish
from tests.testbed.checks import run_id
from tests.testbed.ledger import Ledger

import json

SMUGGLED = "MAIL FROM:<evil@evil.test>\r\nRCPT TO:<smuggled-{run}@ok2.test>\r\nDATA\r\nFrom: evil\r\n\r\nsmuggled\r\n"

# name -> body after the headers; {smuggle} is a whole forged second transaction
BODIES = {
    "bare-lf": "line one\nline two\n\nline four\n",
    "bare-cr": "line one\rline two\r",
    "lf-dot-crlf": "hello\n.\r\n{smuggle}.\r\nbye\r\n",
    "crlf-dot-lf": "hello\r\n.\n{smuggle}.\nbye\r\n",
    "cr-dot-cr": "hello\r.\r{smuggle}.\rbye\r\n",
    "lf-dot-lf": "hello\n.\n{smuggle}.\nbye\n",
    "leading-dots": ".starts with a dot\r\n..two dots\r\n.\r\n...\r\nlast line\r\n",
    "dot-first-line": "body\r\n.",
    "no-final-eol": "the end has no line break",
}


def _mime(msg_id: str, rcpt: str, body: str) -> str:
    return (f"From: <sender@sender.test>\r\nTo: <{rcpt}>\r\nSubject: {msg_id}\r\n"
            f"Message-ID: <{msg_id}@test>\r\n\r\n{body}")


def _canonical(text: str) -> bytes:
    """What the sender meant, in SMTP form: CRLF line ends, ending in CRLF."""
    raw = text.encode()
    raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    return raw if raw.endswith(b"\r\n") else raw + b"\r\n"


@pytest.mark.timeout(120)
def test_smuggling_bodies_arrive_as_one_exact_message(vhost, sinks, start_mta):
    start_mta()
    run = run_id()
    ledger = Ledger("smuggling bodies", bound=0)
    meant = {}
    docs = []
    for k, (name, body) in enumerate(BODIES.items()):
        msg_id = f"smug-{name}-{run}"
        rcpt = f"user{k}-{run}@ok{1 + k % 3}.test"
        mime = _mime(msg_id, rcpt, body.format(smuggle=SMUGGLED.format(run=run)))
        meant[msg_id] = _canonical(mime)
        docs.append(json.dumps({"id": msg_id, "recipient": rcpt, "envelope": "sender@sender.test",
                                "mime": mime}).encode())
    ledger.add(meant)
    publish(vhost, "bulk", docs)
    collector = ResultCollector(vhost)
    collector.collect(meant, timeout=60, settle=1.0)
    ledger.check(collector.by_id, sinks.count_by_id(), sink_duplicates_allowed=0)

    got = {a.msg_id: a.data for a in sinks.accepted() if a.msg_id in meant}
    wrong = {i: (meant[i], got.get(i)) for i in meant if got.get(i) != meant[i]}
    assert not wrong, f"{len(wrong)} messages differ from what was meant: {wrong}"
    smuggled = [a for a in sinks.accepted() if "smuggled" in a.rcpt or "evil" in a.mail_from]
    assert not smuggled, f"a smuggled transaction was accepted: {smuggled}"
    assert not [r for r in sinks.rcpt_attempts() if "smuggled" in r]


@pytest.mark.timeout(120)
def test_lines_over_998_octets_arrive_as_meant(vhost, sinks, start_mta):
    start_mta()
    run = run_id()
    msg_id, mp_id, bad_id = f"smug-long-{run}", f"smug-long-mp-{run}", f"smug-long-hdr-{run}"
    rcpt = f"long-{run}@ok1.test"
    text = "word " * 600                                   # one 3,000-octet line
    mime = _mime(msg_id, rcpt, f"short line\r\n{text}\r\n.{text}\r\n")
    short_part = "--b\r\nContent-Type: text/plain\r\n\r\nshort part, sent byte for byte\r\n"
    multipart = _mime(mp_id, rcpt, f"{short_part}--b\r\nContent-Type: text/plain; charset=utf-8\r\n"
                                   f"Content-Transfer-Encoding: 8bit\r\n\r\n{'Grüße ' * 400}\r\n--b--\r\n").replace(
        "\r\n\r\n", f"\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n"
                    f"References: {' '.join(f'<{i}.{run}@test>' for i in range(200))}\r\n\r\n", 1)
    unfoldable = _mime(bad_id, rcpt, "hi\r\n").replace("\r\n\r\n", f"\r\nX-Token: {'t' * 1200}\r\n\r\n", 1)
    ledger = Ledger("lines over 998 octets", bound=0)
    ledger.add([msg_id, mp_id])
    ledger.add([bad_id], status="invalid")
    publish(vhost, "bulk", [json.dumps({"id": i, "recipient": rcpt, "envelope": "sender@sender.test",
                                        "mime": m}).encode() for i, m in ((msg_id, mime), (mp_id, multipart),
                                                                          (bad_id, unfoldable))])
    collector = ResultCollector(vhost)
    collector.collect(ledger.ids, timeout=60, settle=0.5)
    ledger.check(collector.by_id, sinks.count_by_id(), sink_duplicates_allowed=0)
    got = {a.msg_id: a.data for a in sinks.accepted() if a.msg_id in ledger.ids}
    for i in (msg_id, mp_id):
        assert max(len(line) for line in got[i].split(b"\r\n")) <= 998, i
    received = email.message_from_bytes(got[msg_id], policy=email.policy.default)
    meant = email.message_from_string(mime, policy=email.policy.default)
    assert received.get_content().replace("\r\n", "\n") == meant.get_content().replace("\r\n", "\n")
    received = email.message_from_bytes(got[mp_id], policy=email.policy.default)
    meant = email.message_from_bytes(multipart.encode(), policy=email.policy.default)
    assert [p.get_content() for p in received.iter_parts()] == [p.get_content() for p in meant.iter_parts()]
    assert received["References"] == meant["References"]
    assert short_part.encode() in got[mp_id]
    (final,) = collector.finals(bad_id)
    assert "X-Token" in final["error"] and "998" in final["error"], final


@pytest.mark.timeout(120)
def test_crlf_in_envelope_never_reaches_the_wire(vhost, sinks, start_mta):
    start_mta()
    run = run_id()
    inj = f"inj-{run}"
    cases = {
        "rcpt-crlf": (f"victim-{run}@ok1.test>\r\nRCPT TO:<{inj}-a@ok2.test", "sender@sender.test"),
        "rcpt-lf": (f"victim-{run}@ok1.test\nRCPT TO:<{inj}-b@ok2.test>", "sender@sender.test"),
        "rcpt-cr": (f"victim-{run}@ok1.test\rRCPT TO:<{inj}-c@ok2.test>", "sender@sender.test"),
        "rcpt-nul": (f"victim-{run}@ok1.test\x00{inj}-d@ok2.test", "sender@sender.test"),
        "env-crlf": (f"victim-{run}@ok1.test", f"sender@sender.test>\r\nRCPT TO:<{inj}-e@ok2.test"),
        "env-lf": (f"victim-{run}@ok1.test", f"sender@sender.test\nRSET\nMAIL FROM:<{inj}-f@ok2.test>"),
    }
    ledger = Ledger("crlf in envelope", bound=0)
    docs = []
    for name, (rcpt, env) in cases.items():
        msg_id = f"envinj-{name}-{run}"
        ledger.add([msg_id], status="invalid")
        docs.append(json.dumps({"id": msg_id, "recipient": rcpt, "envelope": env,
                                "mime": _mime(msg_id, "victim@ok1.test", "hi\r\n")}).encode())
    publish(vhost, "bulk", docs)
    collector = ResultCollector(vhost)
    collector.collect(ledger.ids, timeout=60, settle=1.0)
    ledger.check(collector.by_id, sinks.count_by_id(), sink_duplicates_allowed=0)
    assert not [r for r in sinks.rcpt_attempts() if inj in r or f"victim-{run}" in r]
    assert not [a for a in sinks.accepted() if a.msg_id in ledger.ids]
