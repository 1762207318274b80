"""Envelope addresses as intake checks them: RFC 5321 syntax and lengths, no CR/LF/NUL, no
whitespace or brackets, address literals that name an address, and the domain in the
A-label form DNS and the wire need (IDNA 2008, `mta.intake.idn`); SMTPUTF8 noted when the
local part is not ASCII (RFC 6531).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from mta.intake.idn import a_labels

# RFC 5321 dot-string or quoted-string (qtextSMTP / quoted-pairSMTP: printable ASCII, no
# control characters), with RFC 6531's UTF8-non-ascii allowed where atext and qtext are.
_LOCAL_ATOM = re.compile(
    r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]|[^\x00-\x7f])+"
    r"|\"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|[^\x00-\x7f]|\\[\x20-\x7e])*\""
)
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
# Two labels or more, each a `_LABEL`, dot-separated: one match per address, not one per label.
_DOMAIN = re.compile(rf"(?:{_LABEL.pattern}\.)+{_LABEL.pattern}")
_ADDRESS_LITERAL = re.compile(r"\[(?:IPv6:([0-9A-Fa-f:.]+)|([0-9]{1,3}(?:\.[0-9]{1,3}){3}))\]")


class InvalidMessage(Exception):
    """The body cannot be accepted; the text is the reason put in `x-mta-error`
    (`mta.intake.message` raises it too: it is the one refusal of intake)."""


class Address:
    """A checked mailbox: the form for the wire, the ASCII domain for DNS, whether it needs SMTPUTF8."""

    __slots__ = ("text", "local", "domain", "ascii_domain", "utf8")

    def __init__(self, text: str, local: str, domain: str, ascii_domain: str, utf8: bool):
        self.text = text
        self.local = local
        self.domain = domain
        self.ascii_domain = ascii_domain
        self.utf8 = utf8


def parse_address(value: Any, field: str) -> Address:
    if not isinstance(value, str):
        raise InvalidMessage(f"{field}: expected a string address, got {type(value).__name__}")
    if "\r" in value or "\n" in value or "\x00" in value:
        raise InvalidMessage(f"{field}: CR, LF or NUL in address")
    if len(value.encode("utf-8", "surrogatepass")) > 254:
        raise InvalidMessage(f"{field}: address longer than 254 octets")
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain:
        raise InvalidMessage(f"{field}: {value!r} is not of the form local@domain")
    if len(local.encode("utf-8", "surrogatepass")) > 64:
        raise InvalidMessage(f"{field}: local part longer than 64 octets")
    utf8 = not local.isascii()
    if utf8 and not local.isprintable():
        raise InvalidMessage(f"{field}: {value!r} has characters not allowed in a local part")
    if _LOCAL_ATOM.fullmatch(local) is None or local.startswith(".") or local.endswith(".") or ".." in local:
        raise InvalidMessage(f"{field}: {value!r} has an invalid local part")
    if domain.startswith("["):
        _address_literal(domain, field, value)
        return Address(value, local, domain, domain, utf8)
    ascii_domain = _ascii_domain(domain.rstrip(".").lower(), field, value)
    if len(local.encode("utf-8")) + 1 + len(ascii_domain) > 254:
        raise InvalidMessage(f"{field}: address longer than 254 octets once the domain is in ASCII form")
    # The wire form carries the A-label domain: without SMTPUTF8 the command must be ASCII.
    return Address(f"{local}@{ascii_domain}", local, domain, ascii_domain, utf8)


def _address_literal(domain: str, field: str, value: str) -> None:
    """RFC 5321 §4.1.3: `[192.0.2.1]` (each Snum 0-255) or `[IPv6:2001:db8::1]`; nothing else
    can be delivered to (a General-address-literal names no address we could connect to)."""
    match = _ADDRESS_LITERAL.fullmatch(domain)
    valid = match is not None
    if valid and match.group(1) is not None:
        try:
            ipaddress.IPv6Address(match.group(1))
        except ValueError:
            valid = False
    elif valid:
        valid = all(int(snum) <= 255 for snum in match.group(2).split("."))
    if not valid:
        raise InvalidMessage(f"{field}: {value!r} has an invalid address literal")


def _ascii_domain(domain: str, field: str, value: str) -> str:
    if not domain.isascii():
        domain = a_labels(domain)  # IDNA 2008, UTS #46 (mta.intake.idn)
        if domain is None:
            raise InvalidMessage(f"{field}: {value!r} has an invalid international domain")
    if _DOMAIN.fullmatch(domain) is None:  # at least two labels, each a valid one
        raise InvalidMessage(f"{field}: {value!r} has an invalid domain")
    return domain
