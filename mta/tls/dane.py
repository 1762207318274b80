"""DANE for SMTP (RFC 7672) as values: a host's TLSA records and whether a certificate
chain matches them. No I/O: `mta.tls.tlsa` looks the records up.

Only DANE-TA(2) and DANE-EE(3) are usable for SMTP (§3.1.3: PKIX-TA(0) and PKIX-EE(1)
are not), with the selectors full certificate(0) and SubjectPublicKeyInfo(1) and the
matching types full(0), SHA-256(1) and SHA-512(2). DANE-EE matches the server's own
certificate and ignores its names and dates (§3.1.1); DANE-TA matches a certificate of
the chain the server sent, which must then lead from the server's certificate to it,
within its dates and naming the MX host (§3.1.2, §3.2.2). A host whose secure TLSA
records are all unusable still gets mandatory TLS, unauthenticated (§2.2).
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass


DANE_TA, DANE_EE = 2, 3
_DIGESTS = {0: None, 1: hashlib.sha256, 2: hashlib.sha512}


@dataclass(frozen=True, slots=True)
class Tlsa:
    usage: int
    selector: int
    matching: int
    data: bytes

    @property
    def usable(self) -> bool:
        return self.usage in (DANE_TA, DANE_EE) and self.selector in (0, 1) and self.matching in _DIGESTS

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.matching} {self.data.hex()}"


@dataclass(frozen=True, slots=True)
class HostTlsa:
    """What DNSSEC says about one MX host's `_25._tcp` TLSA records: its `records` (all
    secure), or the `failure` of the lookup (then the host gets no mail, §2.2)."""

    records: tuple[Tlsa, ...] = ()
    failure: str | None = None

    @property
    def usable(self) -> tuple[Tlsa, ...]:
        return tuple(r for r in self.records if r.usable)


def _selected(cert, der: bytes, selector: int) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    if selector == 0:
        return der
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _matches(record: Tlsa, cert, der: bytes) -> bool:
    selected = _selected(cert, der, record.selector)
    digest = _DIGESTS[record.matching]
    return (selected if digest is None else digest(selected).digest()) == record.data


def _names(cert) -> list[str]:
    from cryptography import x509

    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        return [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]


def names_host(cert, host: str) -> bool:
    """Whether the certificate names ``host`` (a `*.` name stands for one leftmost label)."""
    host = host.lower().rstrip(".")
    for name in (n.lower().rstrip(".") for n in _names(cert)):
        if name == host or (name.startswith("*.") and host.partition(".")[2] == name[2:] and "." in host):
            return True
    return False


def verify(records: tuple[Tlsa, ...], chain: list[bytes], host: str, now: float) -> str | None:
    """None when the chain (DER, the server's certificate first) matches one of the
    usable ``records`` for ``host`` at wall time ``now``; else why not."""
    from cryptography import x509  # (here: an MTA that never meets DANE never loads it)

    if not chain:
        return "the server sent no certificate"
    certs = [x509.load_der_x509_certificate(der) for der in chain]
    for record in records:
        if record.usage == DANE_EE and _matches(record, certs[0], chain[0]):
            return None
    for record in (r for r in records if r.usage == DANE_TA):
        for depth in range(len(certs) - 1, 0, -1):  # the leaf itself is no trust anchor
            if _matches(record, certs[depth], chain[depth]):
                problem = _issued_down(certs[:depth + 1], host, now)
                if problem is None:
                    return None
                return f"the chain to the DANE-TA certificate does not hold: {problem}"
    return f"the certificate of {host} matches none of its TLSA records ({'; '.join(map(str, records))})"


def _issued_down(certs: list, host: str, now: float) -> str | None:
    from cryptography.exceptions import InvalidSignature

    when = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    for cert, issuer in zip(certs, certs[1:]):
        try:
            cert.verify_directly_issued_by(issuer)
        except (InvalidSignature, ValueError, TypeError) as exc:
            return (f"{cert.subject.rfc4514_string()} is not issued by {issuer.subject.rfc4514_string()} "
                    f"({exc.__class__.__name__})")
    for cert in certs:
        if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
            return f"{cert.subject.rfc4514_string()} is outside its validity dates"
    if not names_host(certs[0], host):
        return f"the certificate does not name {host}"
    return None
