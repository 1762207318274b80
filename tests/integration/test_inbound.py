"""Late bounces and complaints (SPEC §8), real broker, sinks and SMTP clients: messages leave
with VERP envelope senders; the bounces and feedback reports receivers would send back
(Gmail, Microsoft, Yahoo, qmail, ARF from Yahoo and Microsoft) are delivered over SMTP to
the inbound listener and become late `bounced` and `complaint` results and list entries;
the next message to such a recipient is `suppressed`. A soft late bounce, an auto-reply and
junk suppress nothing; junk is kept in `mta.inbound.unmatched` with why; mail for any other
domain is refused and never relayed."""

import re
import smtplib
from pathlib import Path

import pytest

from mta.config import VerpConfig
from mta.inbound.verp import Verp, verp_address, verp_decode
from tests.testbed.amqp import ResultCollector, drain_queue, make_message, publish
from tests.testbed.checks import run_id
from tests.testbed.util import free_port

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "reports"
DOMAIN = "bounces.test"
KEY = "the operator's VERP key"
VERP = Verp(VerpConfig(domain=DOMAIN), KEY.encode())
_SAMPLE_VERP = re.compile(r"bounces\+[0-9a-f-]{36}=([^=\s]+)=([^@\s]+)@bounces\.example", re.IGNORECASE)

# sample -> (the recipient it reports on, what it should become)
REPORTS = {
    "gmail.eml": ("nobody.here@gmail.com", "hard"),
    "outlook.eml": ("missing.person@outlook.com", "hard"),
    "yahoo.eml": ("gone.user@yahoo.com", "hard"),
    "qmail.eml": ("nobody@example.net", "hard"),
    "spam_blocked.eml": ("dave@isp.example", "soft"),
    "arf_yahoo.eml": ("frank@yahoo.com", "complaint"),
    "arf_microsoft.eml": ("grace@hotmail.com", "complaint"),
}


def _report(sample: str, reported: str, recipient: str, verp: str) -> bytes:
    """The sample as the receiver of our message would have written it."""
    text = (SAMPLES / sample).read_bytes().decode("utf-8")
    text = _SAMPLE_VERP.sub(verp, text)
    text = text.replace("Original-Mail-From: <news@news.example>", f"Original-Mail-From: <{verp}>")
    text = re.sub(re.escape(reported), recipient, text, flags=re.IGNORECASE)
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def _send(port: int, sender: str, rcpt: str, data: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("mx.receiver.test")
        code, text = client.mail(sender)
        assert code == 250, text
        code, text = client.rcpt(rcpt)
        if code != 250:
            return code, text
        code, text = client.data(data)
        return code, text


@pytest.mark.timeout(240)
def test_late_bounces_and_complaints_become_results_and_entries(vhost, sinks, mta_config, start_mta):
    port = free_port()
    config = mta_config(inbound=[{"address": f"127.0.0.1:{port}", "domains": [DOMAIN]}],
                        envelope_verp={"domain": DOMAIN, "key_env": "VERP_KEY"})
    start_mta(config, env={"VERP_KEY": KEY})
    run = run_id()
    recipients = {f"{name.split('.')[0]}-{run}": f"{name.split('.')[0]}-{run}@ok1.test" for name in REPORTS}
    recipients[f"ooo-{run}"] = f"ooo-{run}@ok1.test"
    publish(vhost, "bulk", [make_message(i, r) for i, r in recipients.items()])
    results = ResultCollector(vhost)
    results.collect(recipients, timeout=60)
    assert all(results.finals(i)[0]["status"] == "delivered" for i in recipients), dict(results.by_id)

    # each message left with its own envelope sender, naming it and its recipient, signed
    verp = {}
    for accepted in sinks.accepted():
        if accepted.rcpt in recipients.values():
            decoded = verp_decode(VERP, accepted.mail_from)
            assert decoded is not None and decoded[1] == accepted.rcpt, accepted.mail_from
            verp[decoded[0]] = accepted.mail_from
    assert set(verp) == set(recipients)

    for sample, (reported, _) in REPORTS.items():
        msg_id = f"{sample.split('.')[0]}-{run}"
        data = _report(sample, reported, recipients[msg_id], verp[msg_id])
        complaint = sample.startswith("arf")
        rcpt = f"fbl@{DOMAIN}" if complaint else verp[msg_id]  # loops report to one address
        code, text = _send(port, "" if not complaint else "feedback@receiver.test", rcpt, data)
        assert code == 250, (sample, code, text)
    ooo = (SAMPLES / "out_of_office.eml").read_bytes()
    assert _send(port, f"ooo-{run}@ok1.test", verp[f"ooo-{run}"], ooo)[0] == 250
    # a bounce forged for the same recipient, to the unsigned address anyone can write: kept only
    unsigned = verp_address(VerpConfig(domain=DOMAIN), f"ooo-{run}", recipients[f"ooo-{run}"])
    forged = _report("gmail.eml", "nobody.here@gmail.com", recipients[f"ooo-{run}"], unsigned)
    code, text = _send(port, "", unsigned, forged)
    assert (code, text) == (250, b"2.0.0 Kept for inspection"), (code, text)

    late = [i for i in recipients if not i.startswith("ooo")]
    results.collect(until=lambda r: all(len(r.finals(i)) == 2 for i in late), timeout=30, settle=1.0)
    for sample, (_, kind) in REPORTS.items():
        msg_id = f"{sample.split('.')[0]}-{run}"
        first, second = results.finals(msg_id)
        assert first["status"] == "delivered", first
        assert second["recipient"] == recipients[msg_id], second
        if kind == "complaint":
            assert second["status"] == "complaint" and second["complaint"]["feedback_type"] == "abuse", second
        else:
            assert second["status"] == "bounced" and second["late"] is True and second["bounce"] == kind, second
            assert second["results"][0]["enhanced"].startswith("5."), second
    assert len(results.finals(f"ooo-{run}")) == 1, "an auto-reply or a forged bounce is no result"

    # the next message to each: suppressed for a hard bounce and a complaint, sent otherwise
    again = {f"{i}-again": r for i, r in recipients.items()}
    publish(vhost, "bulk", [make_message(i, r) for i, r in again.items()])
    results.collect(again, timeout=60)
    for sample, (_, kind) in REPORTS.items():
        final = results.finals(f"{sample.split('.')[0]}-{run}-again")[0]
        want = "delivered" if kind == "soft" else "suppressed"
        assert final["status"] == want, (sample, final)
        if want == "suppressed":
            assert final["suppression"]["reason"] == ("complaint" if kind == "complaint" else "hard_bounce")
            assert final["suppression"]["message_id"] == f"{sample.split('.')[0]}-{run}"
    assert results.finals(f"ooo-{run}-again")[0]["status"] == "delivered", "nor an entry"


@pytest.mark.timeout(120)
def test_junk_is_kept_and_nothing_is_relayed(vhost, sinks, mta_config, start_mta):
    port = free_port()
    start_mta(mta_config(inbound=[{"address": f"127.0.0.1:{port}", "domains": [DOMAIN],
                                   "max_message_size": 100_000}]))
    run = run_id()
    # another domain: refused at RCPT, never sent on
    code, text = _send(port, f"spammer-{run}@evil.test", f"victim-{run}@ok1.test", b"Subject: hi\r\n\r\nhi\r\n")
    assert code == 550 and b"5.7.1" in text, (code, text)
    # junk and a binary blob: kept, with why, whole
    junk = (SAMPLES / "junk_text.eml").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert _send(port, f"someone-{run}@example.org", f"fbl@{DOMAIN}", junk)[0] == 250
    blob = (SAMPLES / "junk_binary.bin").read_bytes()
    assert _send(port, "", f"postmaster@{DOMAIN}", blob)[0] == 250
    # too big: refused, not kept
    big = b"Subject: big\r\n\r\n" + b"x" * 200_000 + b"\r\n"
    assert _send(port, "", f"fbl@{DOMAIN}", big)[0] == 552

    kept = drain_queue(vhost, "mta.inbound.unmatched", expect=2, timeout=20)
    mine = [k for k in kept if k.headers.get("mail_from") == f"someone-{run}@example.org"]
    assert len(mine) == 1, [k.headers for k in kept]
    assert [k.headers["rcpt_to"] for k in kept if k is not mine[0]] == [f"postmaster@{DOMAIN}"]
    assert mine[0].body.replace(b"\r\n", b"\n") == junk.replace(b"\r\n", b"\n")
    assert mine[0].headers["rcpt_to"] == f"fbl@{DOMAIN}" and mine[0].headers["reason"], mine[0].headers
    assert not [a for a in sinks.accepted() if run in a.rcpt], "nothing received inbound is sent on"
