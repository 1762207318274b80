"""DANE TLSA matching (RFC 7672): DANE-EE by certificate or key, whatever the names and
dates; DANE-TA through the chain the server sent, within dates and naming the host;
PKIX usages unusable for SMTP."""

import datetime
import hashlib
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from mta.tls.dane import HostTlsa, Tlsa, verify

NOW = time.time()


def _cert(name, key, issuer_name, issuer_key, *, ca=False, days=(-1, 1), san=True):
    start = datetime.datetime.fromtimestamp(NOW, datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start + datetime.timedelta(days=days[0]))
               .not_valid_after(start + datetime.timedelta(days=days[1]))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san and not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki():
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("dane ta", ca_key, "dane ta", ca_key, ca=True)
    leaf = _cert("mx.example.com", leaf_key, "dane ta", ca_key)
    expired = _cert("mx.example.com", leaf_key, "dane ta", ca_key, days=(-10, -5))
    der = lambda c: c.public_bytes(Encoding.DER)  # noqa: E731
    return {"ca": der(ca), "leaf": der(leaf), "expired": der(expired), "ca_cert": ca, "leaf_cert": leaf}


def _spki(cert):
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def test_dane_ee_matches_key_or_certificate_and_ignores_names_and_dates(pki):
    spki = hashlib.sha256(_spki(pki["leaf_cert"])).digest()
    assert verify((Tlsa(3, 1, 1, spki),), [pki["leaf"]], "other.name.test", NOW) is None
    assert verify((Tlsa(3, 1, 1, spki),), [pki["expired"]], "mx.example.com", NOW) is None  # same key, expired
    assert verify((Tlsa(3, 0, 2, hashlib.sha512(pki["leaf"]).digest()),), [pki["leaf"]], "x", NOW) is None
    assert verify((Tlsa(3, 0, 0, pki["leaf"]),), [pki["leaf"]], "x", NOW) is None
    wrong = verify((Tlsa(3, 1, 1, b"\0" * 32),), [pki["leaf"]], "mx.example.com", NOW)
    assert wrong is not None and "matches none of its TLSA records" in wrong


def test_dane_ta_needs_the_chain_the_name_and_the_dates(pki):
    ta = (Tlsa(2, 0, 1, hashlib.sha256(pki["ca"]).digest()),)
    assert verify(ta, [pki["leaf"], pki["ca"]], "mx.example.com", NOW) is None
    assert "does not name" in verify(ta, [pki["leaf"], pki["ca"]], "mx.other.test", NOW)
    assert "validity" in verify(ta, [pki["expired"], pki["ca"]], "mx.example.com", NOW)
    assert "matches none" in verify(ta, [pki["leaf"]], "mx.example.com", NOW)  # the TA not sent
    ta_key = (Tlsa(2, 1, 1, hashlib.sha256(_spki(pki["ca_cert"])).digest()),)
    assert verify(ta_key, [pki["leaf"], pki["ca"]], "mx.example.com", NOW) is None


def test_a_leaf_is_never_its_own_trust_anchor(pki):
    ta = (Tlsa(2, 0, 1, hashlib.sha256(pki["leaf"]).digest()),)
    assert verify(ta, [pki["leaf"]], "mx.example.com", NOW) is not None


def test_pkix_usages_and_unknown_parameters_are_unusable():
    state = HostTlsa((Tlsa(0, 0, 1, b"x"), Tlsa(1, 1, 1, b"x"), Tlsa(3, 2, 1, b"x"), Tlsa(3, 1, 9, b"x")))
    assert state.usable == ()
    assert HostTlsa((Tlsa(3, 1, 1, b"x"), Tlsa(1, 1, 1, b"y"))).usable == (Tlsa(3, 1, 1, b"x"),)
