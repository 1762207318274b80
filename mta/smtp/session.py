"""One open SMTP session and its transactions: MAIL, RCPT and DATA in one write when the
server offers PIPELINING (RFC 2920), the next transaction's commands behind the content,
and 8-bit content re-encoded for a receiver without 8BITMIME."""

from __future__ import annotations

import asyncio
import re

import aiosmtplib

from mta.clock import SYSTEM, Clock
from mta import fault
from mta.intake.longlines import Unsendable, seven_bit
from mta.intake.message import InvalidMessage, canonical_data
from mta.smtp.client import ProtocolViolation, Reply, SessionFailed, Timeouts, _failed
from mta.smtp.replies import _ReplyReader


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
        self.tls_failure: str | None = None  # set by the connector: a testing MTA-STS policy not met
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
            return self._take_ahead()
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
                return await self._empty_message(refusal)
            return None
        except (OSError, asyncio.TimeoutError) as exc:
            self.usable = False
            raise SessionFailed(_failed(exc, phase)) from exc

    def _take_ahead(self) -> Reply | None:
        """`begin(None)`: what the transaction pipelined behind the previous message's
        content was told, read with that message's reply by `finish`."""
        (outcome, usable), self._ahead = self._ahead, _NOTHING
        self.usable = usable and self.usable
        if isinstance(outcome, SessionFailed):
            raise outcome
        return outcome

    async def _empty_message(self, refusal: Reply) -> Reply:
        """RFC 2920 §3.1: DATA accepted although the recipient failed: send an empty
        message, which, with no recipient, can only be refused; then ``refusal`` stands.
        Raises what the connection raises (`begin` names it)."""
        self._io.write(b".\r\n")
        _answers(await self._io.read(self._timeouts.data_dot), (),
                 "the end of an empty message (no recipient accepted)")
        return await self._refused(refusal)

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

    def unread_dot(self) -> Reply | None:
        """The reply to the end of data when it has arrived but was not read: a shutdown
        that cancels the worker between the two must still take it as the message's
        outcome (the receiver has the message). Meaningful only while this message's
        content is out and its reply unread, as it is then the next reply queued."""
        reply = self._io.peek()
        if reply is None or not 200 <= reply[0] < 600 or 300 <= reply[0] < 400:
            return None
        return Reply(*reply, "message")

    def stamp(self, reply: Reply) -> Reply:
        """The reply, marked with this session's TLS for the attempt's result."""
        if self.cipher is None and self.tls_failure is None:
            return reply
        return Reply(reply.code, reply.text, reply.phase, self.cipher, self.tls_failure)

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
