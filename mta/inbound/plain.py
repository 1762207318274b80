"""Bounces that are not RFC 3464 DSNs: plain text in the wordings of the MTAs that send them.

Each form is known by its opening words (the same signatures flufl.bounce and every list
manager match): qmail's QSBMF and Yahoo's copy of it, old Postfix, Exim. Two layouts:

* paragraphs that start with the address in angle brackets (qmail, Yahoo, Postfix):
  ``<user@host>:`` then the reason, on the same line or the next ones, until a blank line;
* Exim's indented list: the address indented two spaces, the reason four.

The remote server's reply is taken from its code on ("550 5.1.1 ...", "554: delivery
error: ..."); the status from an enhanced code in the paragraph ("(#5.1.1)" for qmail),
or, for the few texts that are unambiguous and carry none, from the text itself.
"""

from __future__ import annotations

import re

from mta.inbound.status import Recipient, enhanced_in, judge, reply_code

__all__ = ["parse_plain", "report_text", "returned_copy", "says_delayed"]

MAX_RECIPIENTS = 100

_FORMS = (
    ("qmail", re.compile(r"^Hi\. This is the qmail-send program|^Hi\. This is the \S+ program at"
                         r"|^This is the mail delivery agent at", re.MULTILINE)),
    ("yahoo", re.compile(r"^Sorry, we were unable to deliver your message", re.MULTILINE)),
    ("exim", re.compile(r"^This message was created automatically by mail delivery software", re.MULTILINE)),
    ("postfix", re.compile(r"I'm sorry to have to inform you that your message could not"
                           r"|^This is the (?:Postfix program|mail system) at host", re.MULTILINE)),
)
# Notices that a message is only late.
_DELAY = re.compile(r"THIS IS A WARNING ONLY|has not yet been delivered|not been delivered yet"
                    r"|will (?:continue|keep) trying|delivery (?:is )?delayed", re.IGNORECASE)
# Where the returned copy of the original starts: nothing after it is the report.
_COPY = re.compile(r"^-{2,} ?(?:Below this line is a copy|This is a copy of the message"
                   r"|Original message|The header of the original)", re.MULTILINE | re.IGNORECASE)
# The local part holds no "@": one way to split, so a long line of them costs one pass.
_ANGLE = re.compile(r"^<([^<>\s@]+@[^<>\s]+)>(?:\s*\(expanded from [^)]*\))?:[ \t]*(.*)$")
_EXIM_START = re.compile(r"address(?:\(es\))? failed:|has not yet been delivered to", re.IGNORECASE)
_EXIM_ADDRESS = re.compile(r"^ {1,3}<?([^<>\s:@]+@[^<>\s:]+?)>?:?(?:\s+(.*))?$")
# Texts that say which status they mean although they carry no code.
_INFERRED = (
    (re.compile(r"doesn't have an? \S+ account|no mailbox here by that name", re.IGNORECASE), "5.1.1"),
    (re.compile(r"over quota|mailbox (?:is )?full", re.IGNORECASE), "5.2.2"),
)


def says_delayed(text: str) -> bool:
    """Whether a bounce's words say the message is only late ("THIS IS A WARNING ONLY")."""
    return _DELAY.search(text) is not None


def report_text(body: str) -> str:
    """The report part of a plain-text bounce: what precedes the returned copy."""
    match = _COPY.search(body)
    return body[:match.start()] if match else body


def returned_copy(body: str) -> str | None:
    """The returned copy of the original below a plain-text bounce, if it has one."""
    match = _COPY.search(body)
    if match is None:
        return None
    _, newline, rest = body[match.start():].partition("\n")
    return rest if newline else None


def _recipient(address: str, lines: list[str], action: str) -> Recipient:
    paragraph = " ".join(" ".join(lines).split())
    code, start = reply_code(paragraph)
    diagnostic = paragraph[start:] if code is not None else paragraph
    status = enhanced_in(paragraph)
    if status is None:
        status = next((s for pattern, s in _INFERRED if pattern.search(paragraph)), None)
    return judge(address, action, status, diagnostic)


def _angle_paragraphs(lines: list[str]) -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    for line in lines:
        match = _ANGLE.match(line)
        if match and len(found) < MAX_RECIPIENTS:
            current = [match.group(2)]
            found.append((match.group(1), current))
        elif not line.strip() or line.startswith("---"):
            current = None
        elif current is not None:
            current.append(line)
    return found


def _exim_paragraphs(lines: list[str]) -> list[tuple[str, list[str]]]:
    start = next((i for i, line in enumerate(lines) if _EXIM_START.search(line)), None)
    if start is None:
        return []
    found: list[tuple[str, list[str]]] = []
    for line in lines[start + 1:]:
        match = _EXIM_ADDRESS.match(line)
        if match and len(found) < MAX_RECIPIENTS:
            found.append((match.group(1), [match.group(2) or ""]))
        elif line.startswith("    ") and found:
            found[-1][1].append(line)
    return found


def parse_plain(body: str) -> tuple[str, tuple[Recipient, ...], bool] | None:
    """(form, recipients, only delayed?) of a known plain-text bounce, or None."""
    text = report_text(body)
    form = next((name for name, pattern in _FORMS if pattern.search(text)), None)
    if form is None:
        return None
    delayed = says_delayed(text)
    lines = text.splitlines()
    paragraphs = _exim_paragraphs(lines) if form == "exim" else _angle_paragraphs(lines)
    action = "delayed" if delayed else "failed"
    recipients = tuple(_recipient(address, body_lines, action) for address, body_lines in paragraphs)
    return form, recipients, delayed
