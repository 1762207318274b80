"""RFC 3464 delivery status notifications (and RFC 6533's internationalized ones).

A DSN is a multipart/report whose message/delivery-status part holds one block of
per-message fields and one block per recipient. Only the blocks are read: the human
part may be text or HTML in any language (Exchange and Outlook.com put HTML first), and
the per-recipient fields say everything needed. Action "failed" is a bounce (OpenSMTPD's
non-standard "error" too), "delayed" a delay; "delivered", "relayed" and "expanded"
report success and are not kept.

The recipient is the Original-Recipient when it is an address: the one we gave in RCPT
TO, where Final-Recipient may be what an alias or forward made of it (Postfix writes
both). A missing Action is read from the status class; a generic status (5.0.0) gives
way to a specific one in the diagnostic ("550 5.1.1 ...").
"""

from __future__ import annotations

from email.message import Message

import msgspec

from mta.inbound.mime import field_blocks
from mta.inbound.status import Recipient, judge

__all__ = ["Dsn", "parse_dsn", "strip_type"]

STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")
_FAILED = ("failed", "error")


class Dsn(msgspec.Struct, frozen=True):
    recipients: tuple[Recipient, ...]
    reporting_mta: str | None
    envelope_id: str | None
    successes: int  # recipients reported delivered, relayed or expanded


def strip_type(value: str) -> str:
    """"rfc822; user@example.org" -> "user@example.org" (the address or MTA type goes,
    and angle brackets some MTAs add)."""
    kind, semicolon, rest = value.partition(";")
    if not semicolon or " " in kind.strip() or "@" in kind:
        rest = value  # no type, or a ";" that belongs to the value
    return rest.strip().strip("<>").strip()


def _address(block: dict[str, str]) -> str:
    for name in ("original-recipient", "final-recipient", "x-actual-recipient"):
        address = strip_type(block.get(name, ""))
        if "@" in address:
            return address
    return strip_type(block.get("final-recipient", "") or block.get("original-recipient", ""))


def _action(block: dict[str, str]) -> str:
    words = block.get("action", "").lower().split()
    action = words[0].strip(";,()") if words else ""
    if not action:  # some MTAs leave it out: the status class says it
        action = {"5": "failed", "4": "delayed"}.get(block.get("status", "").strip()[:1], "")
    return "failed" if action in _FAILED else action


def _recipient(block: dict[str, str]) -> Recipient:
    diagnostic = block.get("diagnostic-code", "") or block.get("x-postfix-diagnostic", "")
    return judge(_address(block), _action(block), block.get("status") or None,
                 strip_type(diagnostic) if diagnostic else "",
                 strip_type(block.get("remote-mta", "")) or None)


def parse_dsn(status_part: Message) -> Dsn:
    per_message: dict[str, str] = {}
    kept: list[Recipient] = []
    successes = 0
    for block in field_blocks(status_part):
        if not ("final-recipient" in block or "original-recipient" in block):
            per_message.update({k: v for k, v in block.items() if k not in per_message})
            continue
        recipient = _recipient(block)
        if recipient.action in ("failed", "delayed"):
            kept.append(recipient)
        elif recipient.action in ("delivered", "relayed", "expanded"):
            successes += 1
    return Dsn(recipients=tuple(kept),
               reporting_mta=strip_type(per_message.get("reporting-mta", "")) or None,
               envelope_id=per_message.get("original-envelope-id") or None,
               successes=successes)
