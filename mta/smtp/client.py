"""SMTP client's shared values: the `Reply` every step of a session ends in (what the
receiver said, or a synthetic reply with code None when the connection failed), the
`Timeouts` of its steps, the `Credentials` of AUTH, and the two ways a session ends
(`SessionFailed`, `ProtocolViolation`). The session itself is in `session` (the
transaction) and `connector` (opening it), its replies are read by `replies`.

aiosmtplib opens the session (connect, EHLO, STARTTLS, AUTH); our own code runs the
transaction, so that MAIL, RCPT and DATA go out in one write when the server offers
PIPELINING (RFC 2920) instead of three round trips. Every aiosmtplib exception is
translated into a `Reply` value here: nothing above this package sees aiosmtplib types.

Each reply is credited to the command it answers, in order, and must be one that command can
get (RFC 5321 §4.3.2): a reply nobody asked for, 250 to DATA or 354 to MAIL means the two
sides no longer agree on where they are, and the session ends as a protocol failure (code
None, so the message is deferred) before any content goes out on it.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass

from aiosmtplib.errors import SMTPResponseException, SMTPTimeoutError

from shaper.replies import parse_enhanced


@dataclass(frozen=True, slots=True)
class Reply:
    code: int | None  # None: no reply (refused, timed out, hung up)
    text: str  # the reply as received, lines joined by a space, without the code
    phase: str
    tls: str | None = None  # the session's TLS ("TLSv1.3 TLS_AES_256_GCM_SHA384"), None: plaintext
    # An MTA-STS policy in testing mode that the session failed (RFC 8460 result type,
    # `starttls-not-supported`, `certificate-host-mismatch`, ...): delivered anyway, reported.
    tls_failure: str | None = None

    @property
    def enhanced(self) -> str | None:
        return parse_enhanced(self.text)

    @property
    def ok(self) -> bool:
        return self.code is not None and 200 <= self.code < 300

    def __str__(self) -> str:
        return f"{self.code} {self.text}" if self.code is not None else self.text


class SessionFailed(Exception):
    """The connection is unusable; `reply` says where and why."""

    def __init__(self, reply: Reply):
        self.reply = reply
        super().__init__(str(reply))


class ProtocolViolation(OSError):
    """The receiver's replies no longer match the commands sent: a reply no command
    outstanding asked for, or one a command cannot get (250 to DATA, 354 to MAIL). Nothing it
    says on this connection can be trusted any more."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds each step may take (the defaults are the rules', mta.config.DEFAULT_POLICY)."""

    connect: float
    ehlo: float
    starttls: float
    mail_from: float
    rcpt_to: float
    data: float
    data_dot: float
    # Seconds the whole open (connect, banner, EHLO, STARTTLS, AUTH) may take, whatever
    # each step takes within its own timeout; None: only the steps' own bound it.
    opening: float | None = None


def _text(message: str) -> str:
    return " ".join(message.split("\n"))


def _failed(exc: BaseException, phase: str) -> Reply:
    if isinstance(exc, ProtocolViolation):
        return Reply(None, f"protocol error ({phase}): {exc}; the connection is dropped", phase)
    if isinstance(exc, SMTPResponseException) and exc.code > 0:
        return Reply(exc.code, _text(exc.message), phase)
    if isinstance(exc, (SMTPTimeoutError, asyncio.TimeoutError, TimeoutError)):
        return Reply(None, f"timed out ({phase})", phase)
    reason = getattr(exc, "message", None) or str(exc) or exc.__class__.__name__
    return Reply(None, f"connection failed ({phase}): {reason}", phase)

class Credentials:
    """AUTH username and password. The password never shows in a repr, a log or a reply."""

    __slots__ = ("username", "password", "_secrets")

    def __init__(self, username: str, password: str):
        self.username = username
        self.password = password
        plain = base64.b64encode(b"\0" + username.encode() + b"\0" + password.encode()).decode()
        # Very short secrets are not scrubbed: they would mangle every reply and reveal little.
        self._secrets = tuple(s for s in (password, base64.b64encode(password.encode()).decode(), plain) if len(s) >= 4)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Credentials) and (self.username, self.password) == (other.username, other.password)

    def __hash__(self) -> int:
        return hash(self.username)

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=***)"
