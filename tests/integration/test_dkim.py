"""DKIM through the running MTA: what the sink received verifies with dkimpy's verifier against
the public keys that dnsmasq publishes as TXT records (RSA, Ed25519, dual; bare LF/CR, dots,
8-bit and 20 MB messages), and mail that must not be signed is not; what cannot be signed is bounced with the reason."""

import base64
import email
import os
import signal

import dkim
import pytest

from mta.dkim.signature import generate
from tests.testbed.amqp import collect_results, make_message, make_mime, publish
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.dns import Dnsmasq, query_txt, standard_zone, txt_record
from tests.integration.test_reload import rewrite, wait_for

RCPT_DOMAIN = "ok1.test"  # MX 127.0.1.1 in the standard zone
KEYS = [("rsa.test", "s1", "rsa-sha256"), ("ed.test", "e1", "ed25519-sha256"),
        ("dual.test", "r1", "rsa-sha256"), ("dual.test", "e1", "ed25519-sha256")]
ROTATED = ("rsa.test", "s2", "ed25519-sha256")  # published too: the key a reload rotates to


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """(domain, selector) -> (SigningKey, key file), written 0600 like `mta dkim-keygen` does."""
    directory = tmp_path_factory.mktemp("dkim-keys")
    out = {}
    for domain, selector, algorithm in KEYS + [ROTATED]:
        key = generate(domain, selector, algorithm)
        path = directory / f"{domain}.{selector}.pem"
        path.write_bytes(key.pem())
        os.chmod(path, 0o600)
        out[(domain, selector)] = (key, str(path))
    return out


@pytest.fixture(scope="module")
def dns(keys):
    """This module's dnsmasq: the standard zone plus the DKIM public keys as TXT records."""
    records = standard_zone(100) + [txt_record(k.dns_name(), k.dns_txt()) for k, _ in keys.values()]
    with Dnsmasq(records=records) as server:
        yield server


def verify(data: bytes, port: int) -> list[tuple[str, str, bool]]:
    """(d=, s=, verified) for each DKIM-Signature of `data`, keys looked up in the test DNS."""
    def dnsfunc(name, timeout=5):
        return query_txt(port, name.decode())

    checker = dkim.DKIM(data)
    out = []
    signatures = [v for n, v in checker.headers if n.lower() == b"dkim-signature"]
    for index, value in enumerate(signatures):
        tags = dict(t.strip().split(b"=", 1) for t in value.replace(b"\r\n", b"").split(b";") if b"=" in t)
        try:
            ok = checker.verify(index, dnsfunc=dnsfunc)
        except dkim.DKIMException as exc:  # a body hash mismatch raises
            ok = str(exc)
        out.append((tags[b"d"].strip().decode(), tags[b"s"].strip().decode(), ok))
    return out


def raw_mime(msg_id: str, sender: str, body: bytes, headers: bytes = b"") -> bytes:
    return (f"From: Shop <{sender}>\r\nTo: <user@{RCPT_DOMAIN}>\r\nSubject: dkim {msg_id}\r\n"
            f"Message-ID: <{msg_id}@test>\r\nMIME-Version: 1.0\r\n").encode() + headers + b"\r\n" + body


@pytest.mark.timeout(240)
def test_signed_messages_verify_at_the_receiver(vhost, sinks, dns, keys, mta_config, start_mta):
    start_mta(mta_config(dkim=[{"domain": d, "selector": s, "key_file": keys[(d, s)][1], "algorithm": a}
                               for d, s, a in KEYS]))
    run = run_id()
    rcpt = lambda case: f"{case}-{run}@{RCPT_DOMAIN}"  # noqa: E731
    mid = lambda case: f"{case}-{run}"  # noqa: E731
    bare = raw_mime(mid("bare"), "shop@rsa.test",
                    b"line one\nline two\rline three\r\n.leading dot\n..two dots\r\n   \r\nend  with  spaces \t\n\n\n",
                    headers=b"X-Folded: a\n\tb\r\n")
    eight = raw_mime(mid("8bit"), "shop@rsa.test", "Grüße, ça va? \r\n".encode() + b"latin-1 \xe9t\xe9\r\n",
                     headers=b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n")
    line = b"0123456789" * 7 + b"\r\n"
    big = raw_mime(mid("big"), "shop@dual.test", line * (20 * 2**20 // len(line)))

    def message(case, sender, envelope=None, mime=None, **extra):
        mime = mime if mime is not None else make_mime(mid(case), rcpt(case), sender).encode()
        return make_message(mid(case), rcpt(case), envelope=envelope or sender, mime=None,
                            mime_b64=base64.b64encode(mime).decode(), **extra)

    bodies = {
        "rsa": message("rsa", "shop@rsa.test"),
        "ed": message("ed", "news@ed.test"),
        "dual": message("dual", "shop@dual.test"),
        "bare": message("bare", "shop@rsa.test", mime=bare),
        "8bit": message("8bit", "shop@rsa.test", mime=eight),
        "big": message("big", "shop@dual.test", mime=big),
        "nokey": message("nokey", "shop@plain.test"),
        "off": message("off", "shop@rsa.test", dkim=False),
        "pick": message("pick", "shop@dual.test", dkim={"domain": "dual.test", "selector": "e1"}),
        "envelope": message("envelope", "shop@plain.test", envelope="bounces@ed.test",
                            mime=raw_mime(mid("envelope"), "shop@plain.test", b"From header without a key\r\n")),
        "unknown": message("unknown", "shop@rsa.test", dkim={"domain": "rsa.test", "selector": "nope"}),
        "long": message("long", "shop@rsa.test", mime=raw_mime(mid("long"), "shop@rsa.test", b"z" * 1200 + b"\r\n")),
    }
    expected = {
        "rsa": [("rsa.test", "s1")], "ed": [("ed.test", "e1")], "dual": [("dual.test", "r1"), ("dual.test", "e1")],
        "bare": [("rsa.test", "s1")], "8bit": [("rsa.test", "s1")], "big": [("dual.test", "r1"), ("dual.test", "e1")],
        "nokey": [], "off": [], "pick": [("dual.test", "e1")], "envelope": [("ed.test", "e1")],
        "long": [("rsa.test", "s1")],  # re-encoded at intake (mta.intake.longlines), then signed
    }
    publish(vhost, "bulk", list(bodies.values()))
    results = collect_results(vhost, [mid(c) for c in bodies], timeout=180, settle=0.5)

    assert_each_final(results, [mid(c) for c in expected], "delivered")
    for case, reason in (("unknown", "not configured"),):
        (final,) = [r for r in results[mid(case)] if r["final"]]
        assert final["status"] == "bounced" and reason in final["results"][-1]["description"], final

    received = {a.msg_id: a.data for a in sinks.accepted()}
    assert mid("unknown") not in received
    for case, signers in expected.items():
        data = received[mid(case)]
        got = verify(data, dns.port)
        assert sorted(got) == sorted((d, s, True) for d, s in signers), (case, got)
        assert b"\r" not in data.replace(b"\r\n", b"") and b"\n" not in data.replace(b"\r\n", b""), case
    assert received[mid("bare")].endswith(b".leading dot\r\n..two dots\r\n   \r\nend  with  spaces \t\r\n\r\n\r\n")
    assert b"latin-1 \xe9t\xe9\r\n" in received[mid("8bit")]
    assert len(received[mid("big")]) > 20 * 10**6
    assert b"Content-Transfer-Encoding: quoted-printable\r\n" in received[mid("long")]
    assert email.message_from_bytes(received[mid("long")]).get_payload(decode=True) == b"z" * 1200 + b"\r\n"


@pytest.mark.timeout(120)
def test_reload_rotates_keys_and_refuses_an_unreadable_one(vhost, sinks, dns, keys, mta_config, start_mta):
    path = mta_config(dkim=[{"domain": "rsa.test", "selector": "s1", "key_file": keys[("rsa.test", "s1")][1]}])
    mta = start_mta(path)
    run = run_id()

    def send(tag):
        msg_id = f"{tag}-{run}"
        publish(vhost, "bulk", [make_message(msg_id, f"{msg_id}@{RCPT_DOMAIN}", envelope="shop@rsa.test")])
        results = collect_results(vhost, [msg_id], timeout=60, settle=0.2)
        assert_each_final(results, [msg_id], "delivered")
        (data,) = [a.data for a in sinks.accepted() if a.msg_id == msg_id]
        return [(d, s) for d, s, ok in verify(data, dns.port) if ok is True]

    assert send("before") == [("rsa.test", "s1")]
    # an unreadable key: the reload is refused and the old key keeps signing
    rewrite(path, lambda d: d["dkim"][0].update(selector="s2", key_file="/nonexistent/s2.pem",
                                                algorithm="ed25519-sha256"))
    mta.signal(signal.SIGHUP)
    assert wait_for(mta, "reload of")
    assert "dkim[0].key_file: /nonexistent/s2.pem: cannot read" in mta.log_text()
    assert send("refused") == [("rsa.test", "s1")]
    # the rotated key: signing switches to it
    rewrite(path, lambda d: d["dkim"][0].update(key_file=keys[ROTATED[:2]][1]))
    mta.signal(signal.SIGHUP)
    assert wait_for(mta, "reloaded")
    assert send("rotated") == [("rsa.test", "s2")]
