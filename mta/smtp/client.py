"""SMTP client: aiosmtplib for the session (connect, EHLO, STARTTLS, AUTH), our own code for
the transaction, so that MAIL, RCPT and DATA go out in one write when the server offers
PIPELINING (RFC 2920) instead of three round trips.

Every aiosmtplib exception is translated here into a `Reply` value (what the receiver said,
or a synthetic reply with code None when the connection failed): nothing above this module
sees aiosmtplib types.

Each reply is credited to the command it answers, in order, and must be one that command can
get (RFC 5321 §4.3.2): a reply nobody asked for, 250 to DATA or 354 to MAIL means the two
sides no longer agree on where they are, and the session ends as a protocol failure (code
None, so the message is deferred) before any content goes out on it.
"""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import ssl
from collections import deque
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib.errors import (
    SMTPConnectResponseError,
    SMTPException,
    SMTPHeloError,
    SMTPResponseException,
    SMTPTimeoutError,
)

from mta.clock import SYSTEM, Clock
from mta import fault
from mta.intake.longlines import Unsendable, seven_bit
from mta.intake.message import InvalidMessage, canonical_data
from shaper.replies import parse_enhanced


@dataclass(frozen=True, slots=True)
class Reply:
    code: int | None  # None: no reply (refused, timed out, hung up)
    text: str  # the reply as received, lines joined by a space, without the code
    phase: str
    tls: str | None = None  # the session's TLS ("TLSv1.3 TLS_AES_256_GCM_SHA384"), None: plaintext

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


MAX_REPLY = 65536  # octets of one (multi-line) reply: EHLO's is the longest seen, ~1 KB


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


class _ReplyReader(asyncio.Protocol):
    """Takes over the transport after EHLO/STARTTLS: parses every reply in a chunk, so that
    pipelined commands' replies arriving together are all kept (aiosmtplib keeps one).

    Every write says how many replies it asks for; a reply beyond them is unsolicited and
    ends the session (only 421, which RFC 5321 §3.8 lets a server send unasked before it
    hangs up, is a plain close). So the queue never holds more replies than commands are
    outstanding, and a flood of lines costs at most one reply's worth of buffer
    (`MAX_REPLY`)."""

    def __init__(self, clock: Clock = SYSTEM):
        self._clock = clock
        self._buffer = bytearray()
        self._scan = 0  # where the first line of the buffer not yet looked at starts
        self._replies: deque[tuple[int, str]] = deque()
        self._outstanding = 0  # commands written whose reply has not arrived
        self._waiter: asyncio.Future | None = None
        self._error: Exception | None = None
        self.transport: asyncio.Transport | None = None
        # One timer per connection, moved lazily, rather than one per read: a read only
        # notes its deadline; the timer, when it fires early, is set again for it.
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def data_received(self, data: bytes) -> None:
        if self._error is not None:
            return  # the session is over: whatever else comes is not read
        buffer = self._buffer
        buffer += data
        while True:
            start = self._scan
            end = buffer.find(b"\n", start)
            if end == -1:
                break
            if end > MAX_REPLY:  # the buffer starts with the reply being read
                self._violation(f"a reply longer than {MAX_REPLY} octets")
                return
            if end - start > 3 and buffer[start + 3] == 0x2D:  # "250-": more lines follow
                self._scan = end + 1
                continue
            # The reply's last line is in: take it whole (a one-line reply: from the line found).
            reply = _parse_reply(buffer, end if start == 0 else -1)
            self._scan = 0
            if reply is None:  # cannot be: the scan saw its last line
                break
            if self._outstanding > 0:  # the reply to the oldest command outstanding
                self._outstanding -= 1
                self._replies.append(reply)
            else:
                self._unsolicited(reply)
                return
        if len(buffer) > MAX_REPLY:
            self._violation(f"a reply longer than {MAX_REPLY} octets")
        elif self._replies and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _unsolicited(self, reply: tuple[int, str]) -> None:
        """A reply with no command outstanding: the session ends."""
        code, text = reply
        if code == 421:  # the server closes the session: what came before still counts
            self._fail(ConnectionError(f"the server is closing the connection: 421 {text[:200]}"))
        else:
            self._violation(f"unsolicited reply {code} {text[:200]}")

    def _violation(self, what: str) -> None:
        # The replies queued are no longer known to answer what they seem to answer.
        self._replies.clear()
        self._buffer.clear()
        self._scan = 0
        self._fail(ProtocolViolation(what))
        if self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._fail(ConnectionError("the server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"connection lost: {exc}" if exc else "the server closed the connection"))

    def _fail(self, exc: Exception) -> None:
        if self._error is None:
            self._error = exc
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self, timeout: float) -> tuple[int, str]:
        if not self._replies:
            if self._error is not None:
                raise self._error
            clock = self._clock
            self._waiter = waiter = asyncio.get_running_loop().create_future()
            self._deadline = deadline = clock.now() + timeout
            if self._timer is None or self._timer_at > deadline:
                if self._timer is not None:
                    self._timer.cancel()
                self._timer_at = deadline
                self._timer = clock.call_at(deadline, self._expire)
            try:
                await waiter
            finally:
                self._waiter = None
            if not self._replies:
                raise self._error or asyncio.TimeoutError()
        return self._replies.popleft()

    def _expire(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # no read pending: the next one sets the timer again
        if self._clock.now() >= self._deadline:
            waiter.set_exception(asyncio.TimeoutError())
        else:
            self._timer_at = self._deadline
            self._timer = self._clock.call_at(self._deadline, self._expire)

    def write(self, data: bytes, replies: int = 1) -> None:
        """``data`` holds ``replies`` commands, each to be answered by one reply."""
        if self._error is not None or self.transport is None or self.transport.is_closing():
            raise self._error or ConnectionError("connection closed")
        self._outstanding += replies
        self.transport.write(data)

    def write_message(self, data: bytes, ahead: tuple[bytes, bytes] | None = None) -> None:
        """The message and the end-of-data line (and the next transaction's commands, when
        pipelined behind it) in one vectored write, without copying the message."""
        if self._error is not None or self.transport is None or self.transport.is_closing():
            raise self._error or ConnectionError("connection closed")
        if ahead is None:
            self._outstanding += 1
            self.transport.writelines((data, b".\r\n"))
        else:
            self._outstanding += 4
            self.transport.writelines((data, b".\r\n", ahead[0], ahead[1], b"DATA\r\n"))


def _parse_reply(buffer: bytearray, end: int = -1) -> tuple[int, str] | None:
    """Pop one complete (possibly multi-line) reply off the buffer, or None if incomplete.
    ``end``: where the first line ends, when the caller knows it."""
    if end < 0:
        end = buffer.find(b"\n")
    if end == -1:
        return None
    if end >= 3 and buffer[3:4] != b"-":  # one line, the common case: no copies but the text's
        try:
            code = int(buffer[:3])
        except ValueError:
            code = 0
        text = buffer[4:end].decode("utf-8", "replace").strip()
        del buffer[:end + 1]
        return code, text
    offset = 0
    lines = []
    while True:
        end = buffer.find(b"\n", offset)
        if end == -1:
            return None
        line = bytes(buffer[offset:end]).rstrip(b"\r")
        offset = end + 1
        lines.append(line[4:].decode("utf-8", "replace").strip())
        if line[3:4] != b"-":
            break
    try:
        code = int(line[:3])
    except ValueError:
        code = 0  # garbage: treated as a protocol failure by the caller
    del buffer[:offset]
    return code, " ".join(lines)


_SIGNATURE = re.compile(rb"^(?:dkim-signature|arc-message-signature)[ \t]*:", re.IGNORECASE | re.MULTILINE)


def utf8_header_fields(data: bytes) -> bool:
    """Whether the header fields of ``data`` (as sent: CRLF) have 8-bit octets: UTF-8 header
    fields (RFC 6532), which only SMTPUTF8 carries (RFC 6531). Reads the header block only,
    however large the body."""
    if data.startswith(b"\r\n"):
        return False  # no header fields at all: everything is body
    end = data.find(b"\r\n\r\n")
    return not (data if end < 0 else data[:end]).isascii()


def downgrade(data: bytes) -> bytes | Reply:
    """8-bit ``data`` (as sent: CRLF, dot-stuffed) for a receiver without 8BITMIME: its 8-bit
    parts re-encoded quoted-printable (`mta.intake.longlines.seven_bit`), or the local reply that
    refuses it. 8-bit header fields (RFC 6532) cannot be re-encoded: only SMTPUTF8 carries
    them (RFC 6531: 5.6.9; `Session.commands` refuses those before MAIL, this is the net
    under it). A signed message is not re-encoded: its DKIM signature covers the body as it
    is, and a broken signature is worse than a late message."""
    end = data.find(b"\r\n\r\n")
    head = data[:end + 2] if end >= 0 else data
    if utf8_header_fields(data):
        return Reply(550, "5.6.9 the message has 8-bit header fields (RFC 6532), which need SMTPUTF8 and "
                          "8BITMIME, and the receiver does not offer 8BITMIME (local decision)", "message")
    if _SIGNATURE.search(head):
        return Reply(451, "4.6.3 the receiver does not offer 8BITMIME and re-encoding this 8-bit message would "
                          "break its DKIM signature; a message signed with 7-bit content (quoted-printable or "
                          "base64) reaches such receivers (local decision)", "message")
    mime = data.replace(b"\r\n", b"\n").replace(b"\n.", b"\n")  # undo the dot-stuffing
    if mime.startswith(b"."):
        mime = mime[1:]
    try:
        return canonical_data(seven_bit(mime))
    except (Unsendable, InvalidMessage) as exc:
        return Reply(554, f"5.6.3 the receiver does not offer 8BITMIME and this 8-bit message cannot be "
                          f"re-encoded: {exc} (local decision)", "message")


# What each command may be answered with besides a refusal (4xx/5xx, RFC 5321 §4.3.2).
_MAIL_OK = (250,)
_RCPT_OK = (250, 251)
_DATA_OK = (354,)
_DOT_OK = range(200, 300)
_NOTHING = object()  # no pipelined transaction's replies waiting for begin(None)


def _answers(reply: tuple[int, str], accepted, command: str) -> bool:
    """True: ``command`` was accepted; False: it was refused. A reply it cannot get (250 to
    DATA, 354 to MAIL, anything but a refusal where no transaction is open) means the replies
    no longer match the commands: ProtocolViolation."""
    code, text = reply
    if code in accepted:
        return True
    if 400 <= code < 600:
        return False
    if not accepted:
        expected = "a refusal"
    elif isinstance(accepted, range):
        expected = "2xx or a refusal"
    else:
        expected = f"{' or '.join(map(str, accepted))} or a refusal"
    raise ProtocolViolation(f"the receiver answered {command} with {code} {text[:200]}, expected {expected}")


class Session:
    """One open SMTP connection to one host."""

    def __init__(self, client: aiosmtplib.SMTP, mx: str, ip: str, timeouts: Timeouts, tls: bool,
                 clock: Clock = SYSTEM):
        ext = client.esmtp_extensions
        self.mx = mx
        self.ip = ip
        self._timeouts = timeouts
        self.tls = tls
        self.cipher: str | None = None  # set by the connector when TLS is up
        self.pipelining = "pipelining" in ext
        self.eight_bit_mime = "8bitmime" in ext
        self.smtputf8 = "smtputf8" in ext
        self.offers_size = "size" in ext
        size = ext.get("size", "").strip()
        self.max_size = int(size) if size.isdigit() and int(size) > 0 else None
        self.usable = True
        self._ahead = _NOTHING
        self.on_dot = None  # told the reply to the end of data before the pipelined replies behind it are read
        transport = client.transport
        self._io = _ReplyReader(clock)
        self._io.transport = transport
        transport.set_protocol(self._io)

    async def send(self, sender: str, recipient: str, data: bytes, *, utf8: bool, eight_bit: bool) -> Reply:
        """One transaction; returns the deciding reply. Raises SessionFailed if the connection broke."""
        commands = self.commands(sender, recipient, data, utf8=utf8, eight_bit=eight_bit)
        if isinstance(commands, Reply):
            return commands
        refusal = await self.begin(commands)
        if refusal is not None:
            return refusal
        return await self.finish(data)

    def commands(self, sender: str, recipient: str, data: bytes, *, utf8: bool,
                 eight_bit: bool) -> tuple[bytes, bytes] | Reply:
        """MAIL FROM and RCPT TO of one transaction of ``data`` as they go on the wire, or
        the reply that refuses it here, without asking the receiver (no SMTPUTF8, over its
        SIZE). ``utf8``: an envelope address has a non-ASCII local part; ``eight_bit``:
        ``data`` has an 8-bit octet somewhere, and then its header block (only) is read to
        see whether it needs SMTPUTF8 too (RFC 6532 header fields)."""
        if utf8 and not self.smtputf8:
            return Reply(553, "5.6.7 the receiver does not offer SMTPUTF8, needed for this address (local decision)", "mail")
        if eight_bit and not utf8 and utf8_header_fields(data):
            # RFC 6531 §3.2: an internationalized message goes only with SMTPUTF8, and its
            # header fields cannot be downgraded here.
            if not self.smtputf8:
                return Reply(550, "5.6.9 the message has 8-bit header fields (RFC 6532), which only SMTPUTF8 "
                                  "carries, and the receiver does not offer SMTPUTF8 (local decision)", "mail")
            utf8 = True
        size = len(data)
        if self.max_size is not None and size > self.max_size:
            return Reply(552, f"5.3.4 message of {size} octets exceeds the receiver's SIZE {self.max_size} (local decision)", "mail")
        options = b""
        if self.offers_size:
            options += b" SIZE=%d" % size
        if eight_bit and self.eight_bit_mime:
            options += b" BODY=8BITMIME"
        if utf8:
            options += b" SMTPUTF8"
        encoding = "utf-8" if utf8 else "ascii"
        mail = b"MAIL FROM:<" + sender.encode(encoding) + b">" + options + b"\r\n"
        rcpt = b"RCPT TO:<" + recipient.encode(encoding) + b">\r\n"
        return mail, rcpt

    async def begin(self, commands: tuple[bytes, bytes] | None) -> Reply | None:
        """Send MAIL, RCPT and DATA and read their replies. None: the receiver waits for the
        content (354; `finish` sends it); else the reply that refused the transaction, the
        session reset for the next one. ``commands`` None: they already went out, pipelined
        behind the previous message's content (`finish` with ``ahead``), and their replies
        were read with that message's. Raises SessionFailed if the connection broke or the
        replies do not match the commands (RFC 5321 §4.3.2: 250 to DATA is not "go ahead")."""
        if commands is None and self._ahead is not _NOTHING:
            (outcome, usable), self._ahead = self._ahead, _NOTHING
            self.usable = usable and self.usable
            if isinstance(outcome, SessionFailed):
                raise outcome
            return outcome
        io = self._io
        t = self._timeouts
        pipelining = self.pipelining
        phase = "mail"
        try:
            if commands is not None:
                if pipelining:
                    io.write(commands[0] + commands[1] + b"DATA\r\n", 3)
                else:
                    io.write(commands[0])
            mail = await io.read(t.mail_from)
            # The expected reply is taken without a call (four a message); _answers judges the rest.
            mail_ok = mail[0] == 250 or _answers(mail, _MAIL_OK, "MAIL FROM")
            if not pipelining and not mail_ok:
                return await self._refused(Reply(*mail, "mail"))
            phase = "rcpt"
            if not pipelining:
                io.write(commands[1])
            rcpt = await io.read(t.rcpt_to)
            # After a refused MAIL there is no transaction: RCPT can only be refused (503).
            rcpt_ok = (mail_ok and rcpt[0] in _RCPT_OK) or _answers(rcpt, _RCPT_OK if mail_ok else (), "RCPT TO")
            if not pipelining and not rcpt_ok:
                return await self._refused(Reply(*rcpt, "rcpt"))
            phase = "data"
            if not pipelining:
                io.write(b"DATA\r\n")
            data = await io.read(t.data)
            data_ok = data[0] == 354 or _answers(data, _DATA_OK, "DATA")
            refusal = None if rcpt_ok else Reply(*rcpt, "rcpt") if mail_ok else Reply(*mail, "mail")
            if not data_ok:
                return await self._refused(refusal or Reply(*data, "data"))
            if refusal is not None:
                phase = "message"
                # RFC 2920 §3.1: DATA accepted although the recipient failed: send an empty
                # message, which, with no recipient, can only be refused.
                io.write(b".\r\n")
                _answers(await io.read(t.data_dot), (), "the end of an empty message (no recipient accepted)")
                return await self._refused(refusal)
            return None
        except (OSError, asyncio.TimeoutError) as exc:
            self.usable = False
            raise SessionFailed(_failed(exc, phase)) from exc

    async def finish(self, data: bytes, ahead: tuple[bytes, bytes] | None = None) -> Reply:
        """After `begin` returned None: send the content and the end-of-data line, return
        the reply to it. With ``ahead`` (a server that offers PIPELINING), the next
        transaction's MAIL, RCPT and DATA go in the same write (RFC 2920 allows the content
        to open a group; DATA ends it). Their replies are read here too, before this
        message's reply counts: one reply too many or too few in the group shows only at
        its end (DATA answered with anything but 354 or a refusal), and then this message's
        reply may be someone else's. ``begin(None)`` returns what they said. Raises
        SessionFailed if the connection broke before the reply to this message's dot."""
        if not self.eight_bit_mime and not data.isascii():  # RFC 6152: only 7-bit content to this one
            data = await asyncio.to_thread(downgrade, data)
            if isinstance(data, Reply):
                # The receiver waits for a content it must not get: hanging up mid-DATA makes
                # it drop the transaction (RFC 5321 §3.3); the dot would deliver nothing.
                self.usable = False
                self._io.transport.close()
                return data
        try:
            if fault.ARMED: fault.hit("mid_data")  # test-only: MTA_FAULT (mta/fault.py)
            self._io.write_message(data, ahead)
            if fault.ARMED: fault.hit("after_dot")  # test-only: MTA_FAULT (mta/fault.py)
            dot = await self._io.read(self._timeouts.data_dot)
            if not 200 <= dot[0] < 300:
                _answers(dot, _DOT_OK, "the end of data")
        except (OSError, asyncio.TimeoutError) as exc:
            self.usable = False
            raise SessionFailed(_failed(exc, "message")) from exc
        reply = Reply(*dot, "message")
        if self.on_dot is not None:
            self.on_dot(reply)
        if ahead is not None:
            try:
                outcome = await self.begin(None)
            except SessionFailed as exc:
                if isinstance(exc.__cause__, ProtocolViolation):
                    raise SessionFailed(Reply(None, f"protocol error (message): the reply {reply} to this message "
                                                    f"is in doubt: the next transaction's replies, pipelined behind "
                                                    f"it, do not match its commands ({exc.reply.text})",
                                              "message")) from exc.__cause__
                outcome = exc  # the next transaction's failure, not this message's
            # Until begin(None) hands it over, the session stays usable: the next transaction
            # was begun, and its outcome (a 421 that closes the session too) is its own.
            self._ahead = (outcome, self.usable)
            self.usable = True
        return reply

    async def _refused(self, reply: Reply) -> Reply:
        """A refused transaction leaves the session in MAIL state: RSET so the next one starts clean."""
        if reply.code == 421 or not reply.code:
            self.usable = False
            return reply
        try:
            self._io.write(b"RSET\r\n")
            code, _ = await self._io.read(self._timeouts.mail_from)
            if code != 250:
                self.usable = False
        except (OSError, asyncio.TimeoutError):
            self.usable = False
        return reply

    def stamp(self, reply: Reply) -> Reply:
        """The reply, marked with this session's TLS for the attempt's result."""
        return reply if self.cipher is None else Reply(reply.code, reply.text, reply.phase, self.cipher)

    async def close(self) -> None:
        """QUIT politely when the connection is healthy; never raises."""
        try:
            if self.usable:
                self._io.write(b"QUIT\r\n")
                await self._io.read(5.0)
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            if self._io.transport is not None:
                self._io.transport.close()


class _Opening:
    """Where an open is (what its failure names) and the client it holds (what a failure,
    a timeout or a cancellation closes)."""

    __slots__ = ("phase", "client")

    def __init__(self) -> None:
        self.phase = "connect"
        self.client: aiosmtplib.SMTP | None = None

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


class Connector:
    """Opens sessions: connect (implicit TLS on request), banner, EHLO, STARTTLS per policy,
    AUTH when credentials are given. Remembers hosts whose STARTTLS failed, so that the next
    opportunistic try goes in plaintext.

    TLS policy: `opportunistic` uses STARTTLS when offered without checking the certificate;
    `required` never sends mail in plaintext (no STARTTLS offered, or a failed handshake,
    fails the session); `verified` also checks the chain (system CAs or `ca_file`) and that
    the certificate names the host; `disabled` never starts TLS. Credentials go out only
    over TLS whose certificate verified for the host (`verified` whatever the policy),
    unless ``auth_verified`` is False (a route's `tls_verify: false`): then any TLS will do.
    """

    def __init__(self, helo: str, bind: str | None, clock: Clock = SYSTEM, ca_file: str | None = None):
        self._helo = helo
        self._bind = bind
        self._clock = clock
        self._ca_file = ca_file
        self._tls_broken: dict[str, float] = {}
        self._contexts: dict[tuple[bool, str | None], ssl.SSLContext] = {}

    async def open(self, mx: str, ip: str, port: int, *, tls: str, timeouts: Timeouts,
                   auth: Credentials | None = None, implicit_tls: bool = False,
                   ca_file: str | None = None, auth_verified: bool = True) -> Session:
        """Connect, read the banner, EHLO, STARTTLS per policy, AUTH; raises SessionFailed."""
        # A password is only for the host a certificate proves: anyone can offer STARTTLS.
        for_auth = auth is not None and auth_verified and tls in ("opportunistic", "required")
        try:
            return await self._open(mx, ip, port, "verified" if for_auth else tls, timeouts, auth, implicit_tls,
                                    ca_file or self._ca_file, for_auth)
        except SessionFailed as exc:
            if auth is not None:  # a server may echo what it was sent: never let a secret through
                reply = exc.reply
                raise SessionFailed(Reply(reply.code, auth.scrub(reply.text), reply.phase)) from None
            raise

    async def _open(self, mx: str, ip: str, port: int, tls: str, timeouts: Timeouts,
                    auth: Credentials | None, implicit_tls: bool, ca_file: str | None, for_auth: bool) -> Session:
        # what the TLS failures say: the policy, or why a route's credentials need verified TLS
        policy = (f"the credentials of this route go only over TLS verified for {mx} (tls_verify: false "
                  f"would allow any TLS)") if for_auth else f"TLS is {tls} for {mx}"
        opening = _Opening()
        # One deadline over all the steps: a receiver answering each just inside its own
        # timeout would otherwise stretch the open to several times the attempt's deadline.
        deadline = asyncio.timeout(timeouts.opening)
        try:
            async with deadline:
                used_tls = await self._steps(opening, mx, ip, port, tls, policy, timeouts, auth, implicit_tls, ca_file)
        except SessionFailed:
            opening.close()
            raise
        except SMTPConnectResponseError as exc:
            opening.close()
            raise SessionFailed(Reply(exc.code, _text(exc.message), "connect")) from exc
        except (SMTPException, OSError, asyncio.TimeoutError) as exc:
            opening.close()
            phase = opening.phase
            if deadline.expired():  # cut in the middle of a step: its own reply never came
                raise SessionFailed(Reply(None, f"timed out ({phase}): the attempt's deadline came before the "
                                                f"session was open", phase)) from exc
            refused = _certificate_error(exc)
            if refused is not None:
                raise SessionFailed(Reply(None, f"TLS certificate of {mx} not accepted ({policy}): "
                                                f"{refused.verify_message or refused.reason}", "tls")) from exc
            raise SessionFailed(_failed(exc, phase)) from exc
        except asyncio.CancelledError:  # shutdown: nothing of the open stays connected
            opening.close()
            raise
        client = opening.client
        session = Session(client, mx, ip, timeouts, used_tls, self._clock)
        session.cipher = _cipher_of(client.transport) if used_tls else None
        return session

    async def _steps(self, opening: _Opening, mx: str, ip: str, port: int, tls: str, policy: str, timeouts: Timeouts,
                     auth: Credentials | None, implicit_tls: bool, ca_file: str | None) -> bool:
        """Connect, banner, EHLO, STARTTLS per policy, AUTH, noting each step in ``opening``;
        returns whether TLS is up."""
        if implicit_tls:
            # aiosmtplib names the TLS peer after the address it connects to; a socket of
            # our own lets it name (and verify) the host while connecting to the address.
            sock = await self._connect_socket(ip, port, timeouts.connect)
            opening.client = client = aiosmtplib.SMTP(
                hostname=mx, sock=sock, local_hostname=self._helo, timeout=timeouts.connect,
                use_tls=True, start_tls=False, tls_context=self._context(tls == "verified", ca_file),
            )
        else:
            opening.client = client = aiosmtplib.SMTP(
                hostname=ip, port=port, local_hostname=self._helo,
                source_address=(self._bind, 0) if self._bind else None,
                timeout=timeouts.connect, start_tls=False, use_tls=False, validate_certs=False,
            )
        await client.connect()
        opening.phase = "ehlo"
        try:
            await client.ehlo(timeout=timeouts.ehlo)
        except SMTPHeloError as exc:
            if exc.code == 421 or exc.code < 500:
                raise
            await client.helo(timeout=timeouts.ehlo)
        used_tls = implicit_tls
        if implicit_tls:
            pass  # TLS since the first byte
        elif tls != "disabled" and client.supports_extension("starttls"):
            if tls == "opportunistic" and self._tls_broken.get(ip, -1.0) > self._clock.now():
                pass
            else:
                opening.phase = "tls"
                await self._starttls(client, mx, ip, tls, timeouts, ca_file)
                used_tls = True
                opening.phase = "ehlo"
                await client.ehlo(timeout=timeouts.ehlo)
        elif tls in ("required", "verified"):
            raise SessionFailed(Reply(None, f"{policy} but the server does not offer STARTTLS", "tls"))
        if auth is not None:
            opening.phase = "auth"
            await self._authenticate(client, mx, auth, used_tls, timeouts)
        return used_tls

    async def _connect_socket(self, ip: str, port: int, timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if self._bind:
                sock.bind((self._bind, 0))
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (ip, port)), timeout)
        except BaseException:
            sock.close()
            raise
        return sock

    def _context(self, verify: bool, ca_file: str | None) -> ssl.SSLContext:
        """One context per (verification, CA file): building one reads the CA store."""
        key = (verify, ca_file if verify else None)
        context = self._contexts.get(key)
        if context is None:
            context = ssl.create_default_context(cafile=ca_file if verify else None)
            if not verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._contexts[key] = context
        return context

    async def _starttls(self, client: aiosmtplib.SMTP, mx: str, ip: str, tls: str, timeouts: Timeouts,
                        ca_file: str | None) -> None:
        verify = tls == "verified"
        try:
            await client.starttls(tls_context=self._context(verify, ca_file),
                                  server_hostname=mx if verify else None, timeout=timeouts.starttls)
        except (SMTPException, OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            if tls == "opportunistic":
                # Next time this host gets plaintext: a broken TLS stack must not block mail.
                self._tls_broken[ip] = self._clock.now() + 3600
            raise

    async def _authenticate(self, client: aiosmtplib.SMTP, mx: str, auth: Credentials, used_tls: bool,
                            timeouts: Timeouts) -> None:
        if not used_tls:
            raise SessionFailed(Reply(None, f"{mx} did not start TLS: credentials are never sent in plaintext", "auth"))
        methods = client.server_auth_methods
        if "plain" in methods:
            await client.auth_plain(auth.username, auth.password, timeout=timeouts.ehlo)
        elif "login" in methods:
            await client.auth_login(auth.username, auth.password, timeout=timeouts.ehlo)
        else:
            raise SessionFailed(Reply(None, f"{mx} offers no AUTH PLAIN or LOGIN "
                                            f"(offered: {' '.join(methods) or 'none'})", "auth"))


def _certificate_error(exc: BaseException | None) -> ssl.SSLCertVerificationError | None:
    """The certificate check that failed, however deep aiosmtplib wrapped it."""
    for _ in range(5):
        if exc is None or isinstance(exc, ssl.SSLCertVerificationError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _cipher_of(transport) -> str | None:
    """`TLSv1.3 TLS_AES_256_GCM_SHA384`: what results record about the session's TLS."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    return f"{ssl_object.version()} {cipher[0]}" if cipher else ssl_object.version()


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
