"""DANE (RFC 7672) against real DNSSEC: a private unbound validates a zone signed for this
run (tests.testbed.unbound), the MTA believes its AD bit (`dns.dnssec: true`). A TLSA
record forged after signing fails validation (SERVFAIL): nothing goes to that host. An
unsigned zone's TLSA records count for nothing."""

from __future__ import annotations

import hashlib
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.config import write_config
from tests.testbed.sinks import SinkFarm
from tests.testbed.unbound import ValidatingResolver
from tests.testbed.util import free_port

TLS = "127.0.3.21"
SIGNED = ("ee", "ta", "wrong", "forged")


@pytest.fixture(scope="module")
def bed(test_ca):
    names = [f"mx.{d}.signed.test" for d in SIGNED] + ["mx.insecure.plain.test"]
    cert_file, key_file = test_ca.issue(names)
    with open(cert_file, "rb") as fh:
        leaf = x509.load_pem_x509_certificate(fh.read())
    spki = hashlib.sha256(leaf.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).hexdigest()
    ca = hashlib.sha256(test_ca.cert.public_bytes(Encoding.DER)).hexdigest()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    farm = SinkFarm([TLS], free_port([TLS]), use_uvloop=False, tls_context=context).start()
    signed = []
    for domain in SIGNED:
        signed += [f"{domain} IN MX 10 mx.{domain}", f"mx.{domain} IN A {TLS}"]
    signed += [f"_25._tcp.mx.ee IN TLSA 3 1 1 {spki}", f"_25._tcp.mx.ta IN TLSA 2 0 1 {ca}",
               f"_25._tcp.mx.wrong IN TLSA 3 1 1 {'01' * 32}", f"_25._tcp.mx.forged IN TLSA 3 1 1 {spki}"]
    plain = ["insecure IN MX 10 mx.insecure", f"mx.insecure IN A {TLS}", f"_25._tcp.mx.insecure IN TLSA 3 1 1 {'01' * 32}"]
    resolver = ValidatingResolver({"signed.test": signed}, {"plain.test": plain})
    # An attacker's TLSA record: the genuine one's data, one digit changed after signing.
    resolver.forge("signed.test", f"_25._tcp.mx.forged.signed.test.\t60\tIN\tTLSA\t3 1 1 {spki}",
                   f"_25._tcp.mx.forged.signed.test.\t60\tIN\tTLSA\t3 1 1 {'0' if spki[0] != '0' else '1'}{spki[1:]}")
    resolver.start()
    try:
        yield {"port": farm.port, "dns": resolver.port}
    finally:
        resolver.stop()
        farm.stop()


@pytest.mark.timeout(120)
def test_dane_with_a_validating_resolver(vhost, bed, tmp_path, start_mta):
    path = write_config(str(tmp_path / "mta.yaml"), vhost, bed["dns"], bed["port"], dns={"dnssec": True},
                        default={"tls": "dane", "retry_intervals": ["1s"], "max_age": "6s"},
                        mta_sts={"wait": "2s", "timeout": "2s"})
    start_mta(path)
    run = run_id()
    domains = [f"{d}.signed.test" for d in SIGNED] + ["insecure.plain.test"]
    ids = {f"{d}-{run}": f"u-{run}@{d}" for d in domains}
    publish(vhost, "bulk", [make_message(i, r) for i, r in ids.items()])
    collector = ResultCollector(vhost)
    collector.collect(ids, timeout=60)

    for domain in ("ee.signed.test", "ta.signed.test"):
        result = assert_each_final(collector.by_id, [f"{domain}-{run}"], "delivered")[f"{domain}-{run}"]
        assert result["results"][-1]["tls_policy"] == "dane" and result["results"][-1]["tls"] is True
    insecure = assert_each_final(collector.by_id, [f"insecure.plain.test-{run}"], "delivered")
    assert insecure[f"insecure.plain.test-{run}"]["results"][-1]["tls_policy"] == "opportunistic"
    for domain, reason in (("wrong.signed.test", "matches none of its TLSA records"),
                           ("forged.signed.test", "TLSA lookup of _25._tcp.mx.forged.signed.test failed")):
        result = assert_each_final(collector.by_id, [f"{domain}-{run}"], "expired")[f"{domain}-{run}"]
        for attempt in result["results"]:
            assert attempt["phase"] == "tls" and reason in attempt["description"], attempt
