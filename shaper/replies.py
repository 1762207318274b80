"""What an SMTP failure means: final or not, hard or soft, whose fault.

Theory of operation: the basic reply code decides permanence (RFC 5321: 5xx is
permanent, 4xx transient; a missing code, meaning the connection failed or timed
out, is transient). Two exceptions override it: some receivers answer a rate
limit with a 5xx (QQ's "550 Connection frequency limited"), and a rate limit is
never a bounce, so such replies become transient and ``rate_limited``; and a 5xx
that says "try again later" is read as the 4xx it means.

Only texts about speed or volume are rate limits. Greylisting (RFC 6647: "451
4.7.1 Try again later", "Greylisted, see http://postgrey...") refuses a new
(client, sender, recipient) triple for a few minutes whatever the pace, so it is
never one: slowing the destination would not shorten it, only delay the rest.

The enhanced status code (RFC 3463) refines the rest:

* ``bounce`` labels a permanent failure: ``hard`` when the recipient address is
  bad (``5.1.x``, including ``5.1.10`` null MX), ``soft`` for everything else
  (mailbox full ``5.2.x``, policy ``5.7.x``, system ``5.3.x``/``5.4.x``,
  unknown). Soft is the default on purpose: a hard bounce may get an address
  suppressed by the producer, so it needs evidence. Without an enhanced code,
  only unambiguous texts ("user unknown", "no such mailbox") make it hard.
* ``due_to_message`` tells the engine whether to blame the message (address,
  mailbox, content, size: subjects 1, 2, 6 and ``552``) or the destination
  (connection failures, ``421``, system, network, policy ``5.7.x``). Only the
  destination's faults should feed back into its limits and state.

All patterns are compiled once here; operators' own ``patterns:`` rules run
elsewhere, before this built-in fallback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Verdict", "classify", "parse_enhanced", "slow_down"]

# "5.1.1", optionally after the basic code of a full reply line ("550 5.1.1",
# "550-5.1.1"), so callers may pass either the text or the whole line.
_ENHANCED = re.compile(r"\s*(?:[2-5]\d\d[ -]\s*)?([245])\.(\d{1,3})\.(\d{1,3})(?![\d.]*\d)")

# Signs of a rate limit strong enough to turn even a 5xx into a deferral.
_RATE_LIMIT = re.compile(
    r"rate[ -]?limit"  # rate limit, rate-limited, ratelimit
    r"|frequency limit"  # QQ: connection/IP/domain frequency limited
    r"|too many (?:connections|concurrent|simultaneous|sessions|messages|mails|emails"
    r"|requests|deliveries|recipients|smtp)"
    r"|temporarily (?:deferred|throttled|rate)"
    r"|unusual rate|unexpected volume"
    r"|throttl"
    r"|\b4\.7\.28\b"  # Microsoft/Google: unusual rate of mail from the IP
    r"|\bTSS0[14]\b"  # Yahoo: temporarily deferred for volume or complaints
    r"|\bS843\b",  # Outlook: temporarily rate limited for IP reputation
    re.IGNORECASE,
)
# Looser signs, trusted only on the codes that usually carry them (4xx).
_TOO_MANY = re.compile(r"too many|too fast|slow down|busy", re.IGNORECASE)
_RATE_LIMIT_4XX = frozenset({421, 450, 451, 452})

# Greylisting, in the wordings of Postgrey, SQLgrey, milter-greylist, rspamd (whose
# "Try again later" alone is no sign of anything but a deferral).
_GREYLISTING = re.compile(r"gr[ae]y[ -]?list|come back (?:later|in\b)", re.IGNORECASE)
# A 5xx that asks for a retry is a deferral.
_TRY_AGAIN_LATER = re.compile(r"try again later", re.IGNORECASE)

# Of the rate-limit replies, those about concurrency rather than speed.
_TOO_MANY_CONNECTIONS = re.compile(
    r"too many (?:connections|concurrent|simultaneous|sessions|open)"
    r"|(?:concurrent )?connection limit|concurrency",
    re.IGNORECASE,
)

# Texts that name a non-existent recipient; used only when no specific enhanced
# code says otherwise.
_UNKNOWN_RECIPIENT = re.compile(
    r"(?:user|recipient|mailbox|address|account|domain)s? (?:is )?"
    r"(?:unknown|not found|does ?n[o']t exist)"
    r"|unknown (?:user|recipient|mailbox|address|account)"
    r"|no such (?:user|recipient|mailbox|address|account|domain)"
    r"|invalid (?:recipient|mailbox)",
    re.IGNORECASE,
)
# ...unless the text is about the sender ("sender address does not exist").
_SENDER = re.compile(r"\bsender\b|\bmail from\b", re.IGNORECASE)

# 5.1.7 and 5.1.8 are about the *sender's* address: the message is at fault but
# the recipient is fine, so they must not be hard bounces.
_SENDER_ADDRESS = frozenset({"5.1.7", "5.1.8"})
# RFC 3463 subjects: 1 addressing, 2 mailbox, 6 content are the message's.
_MESSAGE_SUBJECTS = frozenset({1, 2, 6})
# Basic codes that speak about the mailbox or the message (RFC 5321 4.2.2/4.2.3).
_MESSAGE_CODES = frozenset({450, 550, 551, 552, 553})


@dataclass(frozen=True, slots=True)
class Verdict:
    permanent: bool
    bounce: str | None  # "hard" or "soft" when permanent, else None
    due_to_message: bool
    rate_limited: bool

    @property
    def temporary(self) -> bool:
        return not self.permanent


def parse_enhanced(text: str) -> str | None:
    """The RFC 3463 code at the start of ``text`` (``"5.1.1 User unknown"``)."""
    match = _ENHANCED.match(text)
    if match is None:
        return None
    klass, subject, detail = match.groups()
    return f"{klass}.{int(subject)}.{int(detail)}"  # "5.1.01" and "5.1.1" alike


def _subject(enhanced: str | None) -> int | None:
    if enhanced is None:
        return None
    try:
        return int(enhanced.split(".")[1])
    except (IndexError, ValueError):
        return None


def _is_rate_limit(code: int, enhanced: str | None, text: str) -> bool:
    if _GREYLISTING.search(text):
        return False
    if code >= 500 and _TRY_AGAIN_LATER.search(text):
        code = 451  # what it means: a temporary refusal
    haystack = f"{enhanced or ''} {text}"
    if _RATE_LIMIT.search(haystack):
        return True
    return code in _RATE_LIMIT_4XX and _TOO_MANY.search(haystack) is not None


def _due_to_message(code: int, enhanced: str | None) -> bool:
    subject = _subject(enhanced)
    if code == 421:  # the service is closing the channel: always the destination
        return False
    if enhanced == "5.3.4":  # message too big for the system
        return True
    if code == 552:  # exceeded storage allocation / message size
        return True
    if subject is not None and subject != 0:
        return subject in _MESSAGE_SUBJECTS
    return code in _MESSAGE_CODES


def _bounce(code: int, enhanced: str | None, text: str) -> str:
    subject = _subject(enhanced)
    if enhanced is not None and enhanced.startswith("5.") and subject not in (None, 0):
        if subject == 1 and enhanced not in _SENDER_ADDRESS:
            return "hard"
        return "soft"
    # No usable enhanced code (or the generic X.0.x): only a clear text, on a
    # code that talks about mailboxes, is evidence enough for "hard".
    if code in (550, 551, 553) and _UNKNOWN_RECIPIENT.search(text) and not _SENDER.search(text):
        return "hard"
    return "soft"


def classify(code: int | None, enhanced: str | None, text: str) -> Verdict:
    """Classify a failed reply. ``code`` None means no reply at all: a refused
    or dropped connection, a timeout, a DNS or TLS failure."""
    if code is None:
        return Verdict(permanent=False, bounce=None, due_to_message=False, rate_limited=False)
    if 200 <= code < 300:
        raise ValueError(f"reply code {code} is a success, not a failure to classify")
    if enhanced is None:
        enhanced = parse_enhanced(text)
    if not 400 <= code < 600:
        # 1xx/3xx where a final reply was due, or garbage: the destination is
        # broken, which is worth another try later, not a bounce.
        return Verdict(permanent=False, bounce=None, due_to_message=False, rate_limited=False)
    if _is_rate_limit(code, enhanced, text):
        return Verdict(permanent=False, bounce=None, due_to_message=False, rate_limited=True)
    if code >= 500 and _TRY_AGAIN_LATER.search(text):
        code = 451  # the receiver itself says it is temporary: never a bounce
    due_to_message = _due_to_message(code, enhanced)
    if code >= 500:
        return Verdict(True, _bounce(code, enhanced, text), due_to_message, rate_limited=False)
    return Verdict(permanent=False, bounce=None, due_to_message=due_to_message, rate_limited=False)


def slow_down(code: int | None, text: str) -> str | None:
    """What a rate-limit reply asks for: ``"connections"`` (fewer sessions at
    once: "421 Too many connections"), ``"rate"`` (fewer messages per second:
    "421 4.7.28 rate limited", "451 TSS04"), or None when the reply is not a
    rate limit at all."""
    if code is None or not 400 <= code < 600:
        return None
    enhanced = parse_enhanced(text)
    if not _is_rate_limit(code, enhanced, text):
        return None
    return "connections" if _TOO_MANY_CONNECTIONS.search(text) else "rate"
