"""What a mail that arrived on an inbound listener reports: a bounce, a delay, a
complaint, an auto-reply, or something not understood. Pure: no I/O, no clock, and it
never raises; what it cannot read is kind "unknown" with the reason, for the caller to
keep for inspection.

Order matters. A feedback report (RFC 5965) or a DSN (RFC 3464) is read from its
structure first; then the known plain-text bounces (`plain`); then any bounce that names
its failed recipients in an X-Failed-Recipients header (Exim, Gmail), in any language.
Only then the signs of an auto-reply, because bounces carry them too (Postfix and Exim
put "Auto-Submitted: auto-replied" on their bounces), and never on a mail that looks like
a bounce: from a mailer-daemon, or with a subject that starts with a bounce's words (an
auto-reply quotes the subject it answers, which may hold them further on). Last, a mail
sent to one of our VERP addresses that looks like a bounce (a mailer-daemon sender, an
"Undeliverable" subject) is one, for the recipient the address names, even when its
text is useless; unless its words say it is only a delay warning.

A report may name other recipients than its VERP address does (a forward's final
address): `recipients` is what the report says, `original_recipient` whom we sent to.

What it concerns: the VERP address it was sent to (`verp`), else the returned copy of
the original (message/rfc822 or text/rfc822-headers, or the copy below a plain-text
bounce): its Message-ID, its X-Mta-Id header, its Return-Path (itself a VERP address when
VERP is on). The MTA adds no header of its own to outgoing mail, so X-Mta-Id is there
only when the producer put it in the MIME.

Why not flufl.bounce (Mailman's bounce detectors): it returns only sets of addresses,
temporary or permanent, with no status, no diagnostic, no original message id, no
feedback reports, and no way to tell an auto-reply; its DSN reader is what `dsn` does in
a few lines, its heuristics date from Mailman's 2000s list traffic (CAI Wireless, Yale,
LLNL), it re-raises its detectors' exceptions, and it would add zope.interface and
atpublic to the stack. We follow its lead on the opening words of qmail's bounces.
"""

from __future__ import annotations

import re
from email.message import Message

import msgspec

from mta.inbound import mime
from mta.inbound.arf import FEEDBACK_TYPES, NOT_COMPLAINTS, parse_feedback
from mta.inbound.dsn import STATUS_TYPES, parse_dsn
from mta.inbound.plain import parse_plain, report_text, returned_copy, says_delayed
from mta.inbound.status import Recipient, enhanced_in, judge, reply_code
from mta.inbound.verp import Verp, VerpConfig, verp_decode

__all__ = ["Recipient", "Report", "VerpConfig", "parse_report", "parse_reports"]

MAX_NAMED = 100  # recipients read from X-Failed-Recipients
RETURNED_TYPES = ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers",
                  "message/global", "message/global-headers")
_AUTO_SUBJECT = re.compile(r"^\s*(?:out of (?:the )?office|automatic reply|auto(?:matic)?[- ]?"
                           r"(?:reply|response|antwort)|autoreply|auto:|abwesenheit|r[ée]ponse automatique"
                           r"|respuesta autom[áa]tica|vacation|on vacation|away from)", re.IGNORECASE)
_AUTO_HEADERS = ("X-Autoreply", "X-Autorespond", "X-Autoresponse", "X-Autoresponder")
_BOUNCE_SUBJECT = re.compile(r"undeliver|not delivered|delivery (?:status|fail|has failed|problem)"
                             r"|returned mail|failure notice|mail delivery failed|non-?delivery",
                             re.IGNORECASE)
_DAEMON = re.compile(r"mailer-daemon|postmaster|mail delivery (?:system|subsystem)", re.IGNORECASE)


class Report(msgspec.Struct, frozen=True, kw_only=True):
    kind: str  # "bounce", "delay", "complaint", "auto_reply", "unknown"
    reason: str = ""  # what was recognised ("RFC 3464 DSN", "qmail bounce") or why not
    recipients: tuple[Recipient, ...] = ()  # for a complaint, the one who complained
    message_id: str | None = None  # the original's Message-ID
    mta_id: str | None = None  # the producer's id: VERP, else the copy's X-Mta-Id header
    by_verp: bool = False  # mta_id and original_recipient are from a VERP address
    envelope_id: str | None = None  # RFC 3461 ENVID, when the DSN returns it
    original_sender: str | None = None  # the original's envelope sender
    original_recipient: str | None = None  # the original's envelope recipient
    reporting_mta: str | None = None
    feedback_type: str | None = None  # ARF: abuse, fraud, virus, other, not-spam, ...
    source_ip: str | None = None
    user_agent: str | None = None


class _Parts(msgspec.Struct):
    status: Message | None = None
    feedback: Message | None = None
    returned: Message | None = None
    text: Message | None = None


def _parts(msg: Message) -> _Parts:
    found = _Parts()
    for part in mime.walk(msg):
        kind = part.get_content_type()
        if kind in STATUS_TYPES and found.status is None:
            found.status = part
        elif kind in FEEDBACK_TYPES and found.feedback is None:
            found.feedback = part
        elif kind in RETURNED_TYPES and found.returned is None and part is not msg:
            found.returned = part
        elif kind == "text/plain" and found.text is None:
            found.text = part
    return found


def parse_report(data: bytes, envelope_recipient: str | None = None,
                 verp: VerpConfig | Verp | None = None) -> Report:
    """Read one inbound mail. `envelope_recipient` is its RCPT TO; with `verp`, an
    address made by `verp_address` there names the message and recipient."""
    return parse_reports(data, [envelope_recipient], verp)[0]


def parse_reports(data: bytes, envelope_recipients: list[str | None],
                  verp: VerpConfig | Verp | None = None) -> list[Report]:
    """What one mail reports for each of its RCPT TOs. The mail is parsed once, however
    many recipients it came for: only what the report is about differs between them."""
    try:
        read = _read(bytes(data))
    except Exception as error:  # never raise: the caller keeps what we cannot read
        return [_unreadable(error)] * len(envelope_recipients)
    if isinstance(read, Report):
        return [read] * len(envelope_recipients)
    reports = []
    for envelope_recipient in envelope_recipients:
        try:
            reports.append(_about(read, envelope_recipient, verp))
        except Exception as error:
            reports.append(_unreadable(error))
    return reports


def _unreadable(error: Exception) -> Report:
    return Report(kind="unknown", reason=f"could not be read: {type(error).__name__}")


class _Read(msgspec.Struct, frozen=True):
    """A mail read, before it is known which of our addresses it came to."""
    report: Report
    original: Message | None  # the returned copy's headers
    body: str  # the first text part
    bounce_unread: bool  # looks like a bounce, but neither its structure nor its text says for whom


def _read(data: bytes) -> _Read | Report:
    if not data.strip():
        return Report(kind="unknown", reason="empty")
    msg = mime.load(data)
    if not msg.keys():
        return Report(kind="unknown", reason="no header fields: not a mail")
    parts = _parts(msg)
    body = mime.text(parts.text) if parts.text is not None else ""
    original = mime.headers_of(parts.returned) if parts.returned is not None else None
    if original is None and body:
        original = _copy_in_text(body)
    report = _classify(msg, parts, body, original)
    unread = report.kind == "unknown" and parts.status is None and parts.feedback is None
    return _Read(report, original, body, unread and _looks_bounced(msg))


def _about(read: _Read, envelope_recipient: str | None, verp: VerpConfig | Verp | None) -> Report:
    report = _identify(read.report, read.original, envelope_recipient, verp)
    if read.bounce_unread and report.original_recipient:
        return _verp_bounce(report, read.body)
    return report


def _classify(msg: Message, parts: _Parts, body: str, original: Message | None) -> Report:
    if parts.feedback is not None:
        return _complaint(parts.feedback, original)
    if parts.status is not None:
        dsn = parse_dsn(parts.status)
        if dsn.recipients:
            kind = "bounce" if any(r.action == "failed" for r in dsn.recipients) else "delay"
            return Report(kind=kind, reason="RFC 3464 DSN", recipients=dsn.recipients,
                          reporting_mta=dsn.reporting_mta, envelope_id=dsn.envelope_id)
    plain = parse_plain(body) if body else None
    if plain is not None and plain[1]:
        form, recipients, delayed = plain
        return Report(kind="delay" if delayed else "bounce", recipients=recipients,
                      reason=f"{form} {'delay warning' if delayed else 'bounce'}")
    failed = _failed_recipients(msg) if parts.status is None else ()
    if failed:
        return _unread_bounce(failed, body, "a bounce naming its recipients in X-Failed-Recipients")
    auto = "" if _looks_bounced(msg) else _auto_reply(msg)  # bounces carry its signs too
    if auto:
        return Report(kind="auto_reply", reason=auto)
    if parts.status is not None:
        return Report(kind="unknown", reason="a DSN that reports no failure or delay")
    if plain is not None:
        return Report(kind="unknown", reason=f"{plain[0]} bounce naming no recipient")
    return Report(kind="unknown", reason="neither a DSN, a feedback report nor a known bounce")


def _complaint(part: Message, original: Message | None) -> Report:
    feedback = parse_feedback(part, original)
    complaint = feedback.feedback_type not in NOT_COMPLAINTS
    reason = ("RFC 5965 feedback report" if complaint
              else f"a feedback report of type {feedback.feedback_type}, not a complaint")
    recipients = (Recipient(recipient=feedback.recipient),) if feedback.recipient else ()
    return Report(kind="complaint" if complaint else "unknown", reason=reason, recipients=recipients,
                  feedback_type=feedback.feedback_type, source_ip=feedback.source_ip,
                  user_agent=feedback.user_agent, reporting_mta=feedback.reporting_mta,
                  original_sender=feedback.original_sender, original_recipient=feedback.recipient)


def _auto_reply(msg: Message) -> str:
    submitted = mime.header(msg, "Auto-Submitted").lower()
    if submitted and not submitted.startswith("no"):
        return f"Auto-Submitted: {submitted}"
    for name in _AUTO_HEADERS:
        if msg.get(name) is not None:
            return f"{name} header"
    if mime.header(msg, "Precedence").lower() == "auto_reply":
        return "Precedence: auto_reply"
    subject = mime.header(msg, "Subject")
    return f"subject {subject[:80]!r}" if _AUTO_SUBJECT.match(subject) else ""


def _looks_bounced(msg: Message) -> bool:
    """A mailer-daemon's mail, or a subject with a bounce's words. An auto-reply quotes the
    subject it answers ("Automatic reply: Delivery status of your order"): in a mail with
    the signs of one, the words count only where the subject starts."""
    if _DAEMON.search(mime.header(msg, "From")):
        return True
    found = _BOUNCE_SUBJECT.search(mime.header(msg, "Subject"))
    return found is not None and (found.start() == 0 or not _auto_reply(msg))


def _failed_recipients(msg: Message) -> tuple[str, ...]:
    """Exim and Gmail name the failed recipients in a header, whatever the language of the text."""
    named = mime.header(msg, "X-Failed-Recipients")
    return tuple(a for a in (_address(p) for p in named.split(",")[:MAX_NAMED]) if a)


def _unread_bounce(addresses: tuple[str, ...], body: str, reason: str) -> Report:
    """A bounce whose text we cannot read, for recipients known otherwise. The first reply
    code in its text is taken as the reason only when there is one recipient to give it to.
    Without a status, the words of a delay warning make it one."""
    text = " ".join(report_text(body).split())[:mime.MAX_SCAN]
    code, start = reply_code(text)
    status = enhanced_in(text) if len(addresses) == 1 else None
    diagnostic = text[start:] if code is not None and len(addresses) == 1 else ""
    delayed = status.startswith("4.") if status is not None else says_delayed(text)
    action = "delayed" if delayed else "failed"
    return Report(kind="delay" if delayed else "bounce", reason=reason,
                  recipients=tuple(judge(a, action, status, diagnostic) for a in addresses))


def _verp_bounce(report: Report, body: str) -> Report:
    """A bounce we could not read, to a VERP address: the address says whose."""
    unread = _unread_bounce((report.original_recipient or "",), body, "a bounce to a VERP address")
    return msgspec.structs.replace(report, kind=unread.kind, reason=unread.reason, recipients=unread.recipients)


def _copy_in_text(body: str) -> Message | None:
    copy = returned_copy(body)
    return mime.parse_headers(copy) if copy else None


def _address(value: str) -> str | None:
    value = value.strip().strip("<>").strip()
    return value if "@" in value else None


def _identify(report: Report, original: Message | None, envelope_recipient: str | None,
              verp: VerpConfig | Verp | None) -> Report:
    """Fill in what says which message the report is about."""
    def read(name: str) -> str:
        return mime.header(original, name) if original is not None else ""
    return_path = _address(read("Return-Path"))
    decoded = None
    if verp is not None:
        candidates = (envelope_recipient, report.original_sender, return_path)
        decoded = next((d for c in candidates if c and (d := verp_decode(verp, c))), None)
    single = report.recipients[0].recipient if len(report.recipients) == 1 else None
    recipients = report.recipients
    if report.kind == "complaint" and not recipients and decoded:  # redacted, but VERP names him
        recipients = (Recipient(recipient=decoded[1]),)
    return msgspec.structs.replace(
        report,
        recipients=recipients,
        message_id=read("Message-ID") or None,
        mta_id=decoded[0] if decoded else read("X-Mta-Id") or None,
        by_verp=decoded is not None,
        original_sender=report.original_sender or return_path,
        original_recipient=decoded[1] if decoded else report.original_recipient or single,
    )
