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
from email.parser import BytesHeaderParser

from mta.intake.idn import ascii_domain

_NAME = re.compile(rb"^(?i:from)[ \t]*:", re.MULTILINE)  # a continuation line starts with WSP
_STRICT = email.policy.default.clone(raise_on_defect=False)


def from_domains(content: bytes) -> list[str] | None:
    """The domains (A-labels, lower case) of the From: addresses, or None when the header
    is missing, given more than once, or not read the same by every reader."""
    end = content.find(b"\r\n\r\n")
    head = content[:end + 2] if end >= 0 else content
    if len(_NAME.findall(head)) != 1:  # none, two, or a folded/obsolete spelling beside the real one
        return None
    message = BytesHeaderParser(policy=_STRICT).parsebytes(head)
    headers = [value for name, value in message.items() if name.strip().lower() == "from"]
    if len(headers) != 1 or not message.get_all("From"):
        return None
    header = headers[0]
    if any(isinstance(d, InvalidHeaderDefect) for d in getattr(header, "defects", ())):
        return None
    domains = []
    for address in getattr(header, "addresses", ()):
        domain = address.domain
        if not domain:
            return None
        domains.append(ascii_domain(domain) or domain.lower())
    return domains or None
