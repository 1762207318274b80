"""The From: of a submitted message, read strictly for `sender_domains` (SPEC §7): a header
that a lenient reader and a strict one would read differently must not pass.

Exactly one From: header (RFC 5322 §3.6), its name written `From:` (the obsolete `From :`
is refused rather than overlooked), parsed by the standard library's RFC 5322 parser, and
refused when that parser finds it defective: `ceo@bank.test (CEO)@shop.test` is bank.test
to one reader and shop.test to another.
"""

from __future__ import annotations

import email.policy
import re
from email.errors import InvalidHeaderDefect

from mta.intake.idn import ascii_domain

_NAME = re.compile(rb"^(?i:from)[ \t]*:", re.MULTILINE)  # a continuation line starts with WSP
_VALUE = re.compile(rb"^(?i:from):([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", re.MULTILINE)
# The forms nearly every application writes, read the same by every reader: `addr`,
# `<addr>`, `Name <addr>`, `"Name" <addr>` with a dot-atom address and no comments.
_SIMPLE = re.compile(r'[ \t]*(?:(?:"[^"\\\r\n]*"|[^<>"(),;:\\@\[\]\r\n]*)<([^<>\s"(),;:\\@\[\]]+)@([A-Za-z0-9.-]+)>'
                     r'|([^<>\s"(),;:\\@\[\]]+)@([A-Za-z0-9.-]+))[ \t]*')
_FACTORY = email.policy.default.header_factory


def from_domains(content: bytes) -> list[str] | None:
    """The domains (A-labels, lower case) of the From: addresses, or None when the header
    is missing, given more than once, or not read the same by every reader."""
    end = content.find(b"\r\n\r\n")
    head = content[:end + 2] if end >= 0 else content
    if len(_NAME.findall(head)) != 1:  # none, two, or an obsolete spelling beside the real one
        return None
    m = _VALUE.search(head)
    if m is None:
        return None
    value = m[1].replace(b"\r\n", b"").decode("utf-8", "replace")
    simple = _SIMPLE.fullmatch(value)
    if simple is not None:
        domain = simple[2] or simple[4]
        return [ascii_domain(domain) or domain.lower()]
    header = _FACTORY("From", value)  # the standard library's RFC 5322 parser, for the rest
    if any(isinstance(d, InvalidHeaderDefect) for d in header.defects):
        return None
    domains = []
    for address in header.addresses:
        if not address.domain:
            return None
        domains.append(ascii_domain(address.domain) or address.domain.lower())
    return domains or None
