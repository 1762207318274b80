"""One recipient of a report: its status, the remote server's words, hard or not.

"Hard" reuses the delivery side's reading of a reply (`shaper.replies.classify`: a 5.1.x
is a bad address, except 5.1.7/5.1.8 which are about the sender; a rate limit or "try
again later" is never permanent; without an enhanced code only an unambiguous "user
unknown" on a mailbox reply counts), with one more guard: a late bounce is a report
written by someone else's software, and the false hard bounces that get good addresses
suppressed are 5.1.x codes put on refusals for spam, policy, blocking or rate, and on
refusals of our sender ("550 5.1.0 Sender address rejected": with VERP, our bounce
domain). So a diagnostic that speaks of any of these is never hard, whatever its code.
"""

from __future__ import annotations

import re

import msgspec

from shaper.replies import classify, parse_enhanced

__all__ = ["Recipient", "judge", "reply_code", "enhanced_in"]

DIAGNOSTIC_MAX = 512  # octets of the remote server's text kept

_NOT_HARD = re.compile(r"\brate\b|ratelimit|\bspam|\bpolic(?:y|ies)\b|\bblock|\bsender\b", re.IGNORECASE)
# A basic reply code where a reply starts: "550 ", "550-", "554:" (Yahoo), "550" at the end.
_CODE = re.compile(r"(?<![\w.\[/:=-])([45]\d\d)(?=[ :-]|$)")
# An enhanced code anywhere: "(#5.1.1)" (qmail), "550 5.1.1", but no piece of an IP address.
_ENHANCED_ANYWHERE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.]*\d)")


class Recipient(msgspec.Struct, frozen=True, kw_only=True):
    recipient: str
    action: str | None = None  # RFC 3464: failed, delayed (others are not kept)
    status: str | None = None  # enhanced status code, "5.1.1"
    diagnostic: str = ""  # the remote server's text, at most DIAGNOSTIC_MAX octets
    hard: bool = False
    remote_mta: str | None = None


def reply_code(text: str) -> tuple[int | None, int]:
    """The first basic reply code in `text`, and where it starts."""
    match = _CODE.search(text)
    return (int(match.group(1)), match.start()) if match else (None, 0)


def enhanced_in(text: str) -> str | None:
    match = _ENHANCED_ANYWHERE.search(text)
    return f"{match.group(1)}.{int(match.group(2))}.{int(match.group(3))}" if match else None


def tidy(diagnostic: str) -> str:
    """One line; the repeated prefixes of a multi-line reply ("550-5.1.1 ... 550-5.1.1
    ...") said once; at most DIAGNOSTIC_MAX octets, cut between characters."""
    text = " ".join(diagnostic.split())
    first = re.match(r"(\d{3})[ -](?:(\d\.\d{1,3}\.\d{1,3}) )?", text)
    if first:
        code, enhanced = first.groups()
        repeat = re.escape(code) + r"[ -]" + (rf"(?:{re.escape(enhanced)} +)?" if enhanced else "")
        rest = re.sub(r"\s" + repeat, " ", text[first.end():])
        text = " ".join(f"{code} {enhanced or ''} {rest}".split())
    return text.encode("utf-8")[:DIAGNOSTIC_MAX].decode("utf-8", "ignore")


def _best_status(status: str | None, text: str) -> str | None:
    """The report's status, or the diagnostic's when the report says less (none, or a
    generic X.0.X where the reply names the subject)."""
    status = parse_enhanced(status or "")
    found = enhanced_in(text)
    if status is None:
        return found
    if found and status.split(".")[1] == "0" and found[0] == status[0] and found.split(".")[1] != "0":
        return found
    return status


def is_hard(status: str | None, diagnostic: str) -> bool:
    code, _ = reply_code(diagnostic)
    if code is None and status:
        code = {"5": 550, "4": 450}.get(status[0])
    if code is None or (status is not None and not status.startswith("5.")):
        return False
    verdict = classify(code, status, diagnostic)
    return verdict.permanent and verdict.bounce == "hard" and not _NOT_HARD.search(diagnostic)


def judge(recipient: str, action: str | None, status: str | None, diagnostic: str,
          remote_mta: str | None = None) -> Recipient:
    text = tidy(diagnostic)
    status = _best_status(status, text)
    # When the remote reply's own code disagrees ("Status: 5.1.1" over "550 5.7.1 ..."),
    # the reply is what the receiver said: both must name a bad address.
    code, start = reply_code(text)
    said = parse_enhanced(text[start:]) if code is not None else None
    hard = action == "failed" and is_hard(status, text) and (said is None or said.startswith("5.1."))
    return Recipient(recipient=recipient, action=action, status=status, diagnostic=text,
                     hard=hard, remote_mta=remote_mta)
