"""DANE (RFC 7672) end to end, with a stand-in for the validating resolver: dnsmasq serves
the zone (MX, TLSA records) and a front (tests.testbed.dns.FaultyDns) sets the AD bit on
the answers of the names a real resolver would have validated, or answers SERVFAIL. The
MTA runs with `dns.dnssec: true` and the default `tls: dane`. What this does not test is
DNSSEC validation itself: that is the local resolver's job (README, TLS)."""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.config import write_config
from tests.testbed.dns import Dnsmasq, FaultyDns
from tests.testbed.sinks import SinkFarm
from tests.testbed.util import free_port

TLS, PLAIN = "127.0.3.11", "127.0.3.12"
DOMAINS = {"ee.test": TLS, "wrong.test": TLS, "unusable.test": PLAIN, "servfail.test": TLS, "insecure.test": TLS,
           "ta.test": TLS}


def _tlsa(name: str, usage: int, selector: int, matching: int, data: bytes) -> str:
    return f"dns-rr=_25._tcp.{name},52,{usage:02x}{selector:02x}{matching:02x}{data.hex()}"


@pytest.fixture(scope="module")
def bed(test_ca):
    cert_file, key_file = test_ca.issue([f"mx.{d}" for d, a in DOMAINS.items() if a == TLS])
    with open(cert_file, "rb") as fh:
        leaf = x509.load_pem_x509_certificate(fh.read())
    spki = leaf.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    ca_der = test_ca.cert.public_bytes(Encoding.DER)
    import ssl
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)  # the chain file: the server sends the CA too
    port = free_port([TLS, PLAIN])
    farms = [SinkFarm([TLS], port, use_uvloop=False, tls_context=context).start(),
             SinkFarm([PLAIN], port, use_uvloop=False).start()]
    rr = []
    for domain, address in DOMAINS.items():
        rr += [f"mx-host={domain},mx.{domain},10", f"host-record=mx.{domain},{address}"]
    rr += [_tlsa("mx.ee.test", 3, 1, 1, hashlib.sha256(spki).digest()),
           _tlsa("mx.wrong.test", 3, 1, 1, b"\1" * 32),
           _tlsa("mx.unusable.test", 1, 1, 1, hashlib.sha256(spki).digest()),  # PKIX-EE: unusable for SMTP
           _tlsa("mx.insecure.test", 3, 1, 1, b"\1" * 32),
           _tlsa("mx.ta.test", 2, 0, 1, hashlib.sha256(ca_der).digest())]
    zone = Dnsmasq(records=rr).start()
    front = FaultyDns(zone.port, servfail=["_25._tcp.mx.servfail.test"],
                      authentic=[d for d in DOMAINS if d != "insecure.test"]).start()
    try:
        yield {"port": port, "dns": front.port}
    finally:
        front.stop()
        zone.stop()
        for farm in farms:
            farm.stop()


@pytest.mark.timeout(120)
def test_dane_authenticates_or_defers(vhost, bed, tmp_path, start_mta):
    path = write_config(str(tmp_path / "mta.yaml"), vhost, bed["dns"], bed["port"], dns={"dnssec": True},
                        default={"tls": "dane", "retry_intervals": ["1s"], "max_age": "6s"},
                        mta_sts={"wait": "2s", "timeout": "2s"})
    start_mta(path)
    run = run_id()
    ids = {f"{d}-{run}": f"u-{run}@{d}" for d in DOMAINS}
    publish(vhost, "bulk", [make_message(i, r) for i, r in ids.items()])
    collector = ResultCollector(vhost)
    collector.collect(ids, timeout=60)

    for domain in ("ee.test", "ta.test"):
        result = assert_each_final(collector.by_id, [f"{domain}-{run}"], "delivered")[f"{domain}-{run}"]
        attempt = result["results"][-1]
        assert attempt["tls_policy"] == "dane" and attempt["tls"] is True, attempt

    insecure = assert_each_final(collector.by_id, [f"insecure.test-{run}"], "delivered")[f"insecure.test-{run}"]
    assert insecure["results"][-1]["tls_policy"] == "opportunistic"  # no AD: its TLSA records do not count

    expected = {"wrong.test": "matches none of its TLSA records",
                "unusable.test": "does not offer STARTTLS",  # unusable records: TLS still mandatory
                "servfail.test": "TLSA lookup of _25._tcp.mx.servfail.test failed"}
    for domain, reason in expected.items():
        result = assert_each_final(collector.by_id, [f"{domain}-{run}"], "expired")[f"{domain}-{run}"]
        for attempt in result["results"]:
            assert attempt["phase"] == "tls" and attempt["tls_policy"] == "dane", attempt
            assert reason in attempt["description"], attempt

    # TLS-RPT: one tlsa policy per MX host, its records as the policy string.
    day = time.strftime("%Y-%m-%d", time.gmtime())
    for domain, kind in (("ee.test", None), ("wrong.test", "tlsa-invalid"), ("unusable.test", "starttls-not-supported"),
                         ("servfail.test", "dnssec-invalid")):
        [entry] = _report(f"{path}.tlsrpt/{day}_{domain}.json")["policies"]
        assert entry["policy"]["policy-type"] == "tlsa" and entry["policy"]["mx-host"] == [f"mx.{domain}"]
        if kind is None:
            assert entry["summary"]["total-successful-session-count"] == 1 and not entry["failure-details"]
        else:
            assert {d["result-type"] for d in entry["failure-details"]} == {kind}, entry


def _report(path: str) -> dict:
    deadline = time.monotonic() + 20
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"no TLS-RPT report {path}"
        time.sleep(0.2)
    with open(path) as fh:
        return json.load(fh)


@pytest.mark.timeout(60)
def test_explain_shows_the_tlsa_records(vhost, bed, tmp_path):
    import subprocess
    import sys
    path = write_config(str(tmp_path / "mta.yaml"), vhost, bed["dns"], bed["port"], dns={"dnssec": True},
                        default={"tls": "dane"})
    done = subprocess.run([sys.executable, "-m", "mta", "check", path, "--explain", "ee.test"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "DANE: mx.ee.test: 3 1 1 " in done.stdout
    assert "TLS in force: DANE (TLSA records of mx.ee.test)" in done.stdout
