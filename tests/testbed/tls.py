"""A throw-away certificate authority for TLS tests, made with `cryptography` when first
asked for (nothing is stored in the repository): server certificates for the sinks, the CA
file for the MTA's `ca_file`.

The session fixture ``test_ca`` (tests/conftest.py) makes one per test session in a
temporary directory and removes it at the end.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import ssl
from typing import Iterable, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())  # fast to make, accepted everywhere


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class TestCA:
    __test__ = False  # not a pytest test class

    def __init__(self, directory: str):
        self.directory = directory
        self._key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mta test CA")])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = os.path.join(directory, "ca.pem")
        with open(self.ca_file, "wb") as fh:
            fh.write(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, names: Iterable[str] = (), ips: Iterable[str] = ()) -> Tuple[str, str]:
        """A server certificate for these DNS names and IP addresses: (cert file, key file)."""
        names, ips = list(names), list(ips)
        key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        alt = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (names or ips)[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        stem = os.path.join(self.directory, "-".join(names + ips).replace(":", "_"))
        with open(stem + ".crt", "wb") as fh:
            fh.write(cert.public_bytes(serialization.Encoding.PEM))
            fh.write(self.cert.public_bytes(serialization.Encoding.PEM))
        with open(stem + ".key", "wb") as fh:
            fh.write(_pem_key(key))
        return stem + ".crt", stem + ".key"

    def server_context(self, names: Iterable[str] = (), ips: Iterable[str] = ()) -> ssl.SSLContext:
        cert, key = self.issue(names, ips)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        return context


def tls_farm(ca: TestCA, address: str, *, names: Iterable[str] = (), ips: Iterable[str] = (),
             implicit: bool = False, auth=None, starttls: bool = True):
    """A started one-address SinkFarm speaking TLS with a certificate of ``ca`` for
    ``names``/``ips``: STARTTLS (default) or implicit TLS; AUTH when ``auth`` is given."""
    from .sinks import SinkFarm

    context = ca.server_context(names, ips)
    farm = SinkFarm([address], use_uvloop=False, auth=auth,
                    tls_context=context if starttls and not implicit else None,
                    implicit_tls=context if implicit else None)
    return farm.start()


def secret_forms(username: str, password: str) -> Tuple[str, ...]:
    """The ways a password could leak: as is, base64 alone, and the AUTH PLAIN token."""
    return (password, base64.b64encode(password.encode()).decode(),
            base64.b64encode(f"\0{username}\0{password}".encode()).decode())


def assert_no_secret(texts: Iterable[str], username: str, password: str) -> None:
    forms = secret_forms(username, password)
    for i, text in enumerate(texts):
        for form in forms:
            assert form not in text, f"a form of the password appears in text #{i}"
