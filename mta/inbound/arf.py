"""RFC 5965 feedback reports (ARF): a recipient said our message was unwanted.

Yahoo's and AOL's complaint feedback loops and Microsoft's JMRP all send a
multipart/report with a message/feedback-report part; its fields name the feedback type,
the reporter (User-Agent), the IP the message came from (Source-IP) and, when not
redacted, the complaining recipient (Original-Rcpt-To). When that is missing, the
returned copy names the recipient: Microsoft's X-HmXmrOriginalRecipient header, else the
To: of the copy. Some operators redact both; the VERP address in Original-Mail-From or
the copy's Return-Path then still names him (see `reports`).

Only the types that are complaints make one: "abuse", "fraud", "virus", "other" (and
unregistered ones). "not-spam" is the opposite, and "auth-failure" (RFC 6591) is a
report on authentication, not a person's complaint: neither may suppress an address.
"""

from __future__ import annotations

from email.message import Message
from email.utils import getaddresses, parseaddr

import msgspec

from mta.inbound.dsn import strip_type
from mta.inbound.mime import field_blocks, header

__all__ = ["Feedback", "parse_feedback", "NOT_COMPLAINTS"]

FEEDBACK_TYPES = ("message/feedback-report",)
NOT_COMPLAINTS = frozenset({"not-spam", "auth-failure"})


class Feedback(msgspec.Struct, frozen=True):
    feedback_type: str | None
    recipient: str | None
    original_sender: str | None
    source_ip: str | None
    user_agent: str | None
    reporting_mta: str | None


def _address(value: str) -> str | None:
    try:
        address = parseaddr(value)[1] or value.strip().strip("<>")
    except Exception:
        return None
    return address if "@" in address else None


def _copy_recipient(original: Message | None) -> str | None:
    if original is None:
        return None
    hotmail = _address(header(original, "X-HmXmrOriginalRecipient"))
    if hotmail:
        return hotmail
    try:
        addresses = [a for _, a in getaddresses([header(original, "To")]) if "@" in a]
    except Exception:
        return None
    return addresses[0] if len(addresses) == 1 else None  # several: which one complained?


def parse_feedback(report_part: Message, original: Message | None) -> Feedback:
    blocks = field_blocks(report_part)
    fields = blocks[0] if blocks else {}
    recipient = _address(fields.get("original-rcpt-to", "")) or _copy_recipient(original)
    return Feedback(
        feedback_type=fields.get("feedback-type", "").strip().lower() or None,
        recipient=recipient,
        original_sender=_address(fields.get("original-mail-from", "")),
        source_ip=fields.get("source-ip", "").strip() or None,
        user_agent=fields.get("user-agent", "").strip() or None,
        reporting_mta=strip_type(fields.get("reporting-mta", "")) or None,
    )
