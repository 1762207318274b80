"""SMTP client: aiosmtplib for the session (connect, EHLO, STARTTLS, AUTH), our own code for
the transaction, so that MAIL, RCPT and DATA go out in one write when the server offers
PIPELINING (RFC 2920) instead of three round trips.

Every aiosmtplib exception is translated here into a `Reply` value (what the receiver said,
or a synthetic reply with code None when the connection failed): nothing above this module
sees aiosmtplib types.
"""

from __future__ import annotations

import asyncio
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

from shaper.replies import parse_enhanced


@dataclass(frozen=True, slots=True)
class Reply:
    code: int | None  # None: no reply (refused, timed out, hung up)
    text: str  # the reply as received, lines joined by a space, without the code
    phase: str

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


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 30.0
    ehlo: float = 60.0
    starttls: float = 60.0
    mail_from: float = 60.0
    rcpt_to: float = 60.0
    data: float = 60.0
    data_dot: float = 120.0


def _text(message: str) -> str:
    return " ".join(message.split("\n"))


def _failed(exc: BaseException, phase: str) -> Reply:
    if isinstance(exc, SMTPResponseException) and exc.code > 0:
        return Reply(exc.code, _text(exc.message), phase)
    if isinstance(exc, (SMTPTimeoutError, asyncio.TimeoutError, TimeoutError)):
        return Reply(None, f"timed out ({phase})", phase)
    reason = getattr(exc, "message", None) or str(exc) or exc.__class__.__name__
    return Reply(None, f"connection failed ({phase}): {reason}", phase)


class _ReplyReader(asyncio.Protocol):
    """Takes over the transport after EHLO/STARTTLS: parses every reply in a chunk, so that
    pipelined commands' replies arriving together are all kept (aiosmtplib keeps one)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._buffer = bytearray()
        self._replies: deque[tuple[int, str]] = deque()
        self._waiter: asyncio.Future | None = None
        self._error: Exception | None = None
        self.transport: asyncio.Transport | None = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            parsed = _parse_reply(self._buffer)
            if parsed is None:
                break
            self._replies.append(parsed)
        if len(self._buffer) > 65536:
            self._fail(ConnectionError("reply too long"))
        elif self._replies and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def eof_received(self) -> bool:
        self._fail(ConnectionError("the server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"connection lost: {exc}" if exc else "the server closed the connection"))

    def _fail(self, exc: Exception) -> None:
        if self._error is None:
            self._error = exc
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self, timeout: float) -> tuple[int, str]:
        if not self._replies:
            if self._error is not None:
                raise self._error
            self._waiter = waiter = self._loop.create_future()
            timer = self._loop.call_later(timeout, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if not self._replies:
                raise self._error or asyncio.TimeoutError()
        return self._replies.popleft()

    def write(self, data: bytes) -> None:
        if self._error is not None or self.transport is None or self.transport.is_closing():
            raise self._error or ConnectionError("connection closed")
        self.transport.write(data)

    def write_message(self, data: bytes) -> None:
        """The message and the end-of-data line in one vectored write, without copying the message."""
        if self._error is not None or self.transport is None or self.transport.is_closing():
            raise self._error or ConnectionError("connection closed")
        self.transport.writelines((data, b".\r\n"))


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError())


def _parse_reply(buffer: bytearray) -> tuple[int, str] | None:
    """Pop one complete (possibly multi-line) reply off the buffer, or None if incomplete."""
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


class Session:
    """One open SMTP connection to one host."""

    def __init__(self, client: aiosmtplib.SMTP, mx: str, ip: str, timeouts: Timeouts, tls: bool):
        ext = client.esmtp_extensions
        self.mx = mx
        self.ip = ip
        self._timeouts = timeouts
        self.tls = tls
        self.pipelining = "pipelining" in ext
        self.eight_bit_mime = "8bitmime" in ext
        self.smtputf8 = "smtputf8" in ext
        self.offers_size = "size" in ext
        size = ext.get("size", "").strip()
        self.max_size = int(size) if size.isdigit() and int(size) > 0 else None
        self.usable = True
        transport = client.transport
        self._io = _ReplyReader(asyncio.get_running_loop())
        self._io.transport = transport
        transport.set_protocol(self._io)

    async def send(self, sender: str, recipient: str, data: bytes, *, utf8: bool, eight_bit: bool) -> Reply:
        """One transaction; returns the deciding reply. Raises SessionFailed if the connection broke."""
        if utf8 and not self.smtputf8:
            return Reply(553, "5.6.7 the receiver does not offer SMTPUTF8, needed for this address (local decision)", "mail")
        if self.max_size is not None and len(data) > self.max_size:
            return Reply(552, f"5.3.4 message of {len(data)} octets exceeds the receiver's SIZE {self.max_size} (local decision)", "mail")
        options = b""
        if self.offers_size:
            options += b" SIZE=%d" % len(data)
        if eight_bit and self.eight_bit_mime:
            options += b" BODY=8BITMIME"
        if utf8:
            options += b" SMTPUTF8"
        encoding = "utf-8" if utf8 else "ascii"
        mail = b"MAIL FROM:<" + sender.encode(encoding) + b">" + options + b"\r\n"
        rcpt = b"RCPT TO:<" + recipient.encode(encoding) + b">\r\n"
        io = self._io
        t = self._timeouts
        phase = "mail"
        try:
            if self.pipelining:
                io.write(mail + rcpt + b"DATA\r\n")
                mail_reply = await io.read(t.mail_from)
                phase = "rcpt"
                rcpt_reply = await io.read(t.rcpt_to)
                phase = "data"
                data_reply = await io.read(t.data)
            else:
                io.write(mail)
                mail_reply = await io.read(t.mail_from)
                if mail_reply[0] != 250:
                    return await self._refused(Reply(*mail_reply, "mail"))
                phase = "rcpt"
                io.write(rcpt)
                rcpt_reply = await io.read(t.rcpt_to)
                if rcpt_reply[0] not in (250, 251):
                    return await self._refused(Reply(*rcpt_reply, "rcpt"))
                phase = "data"
                io.write(b"DATA\r\n")
                data_reply = await io.read(t.data)
            refusal = None
            if mail_reply[0] != 250:
                refusal = Reply(*mail_reply, "mail")
            elif rcpt_reply[0] not in (250, 251):
                refusal = Reply(*rcpt_reply, "rcpt")
            if data_reply[0] != 354:
                return await self._refused(refusal or Reply(*data_reply, "data"))
            phase = "message"
            if refusal is not None:
                # RFC 2920 §3.1: DATA accepted although the recipient failed: send an empty message.
                io.write(b".\r\n")
                await io.read(t.data_dot)
                return await self._refused(refusal)
            io.write_message(data)
            code, text = await io.read(t.data_dot)
            if code < 200:
                raise ConnectionError(f"malformed reply {text!r}")
            return Reply(code, text, "message")
        except (OSError, asyncio.TimeoutError) as exc:
            self.usable = False
            raise SessionFailed(_failed(exc, phase)) from exc

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


class Connector:
    """Opens sessions. Remembers hosts whose STARTTLS failed, so the next try goes in plaintext."""

    def __init__(self, helo: str, bind: str | None, clock):
        self._helo = helo
        self._bind = bind
        self._clock = clock
        self._tls_broken: dict[str, float] = {}

    async def open(self, mx: str, ip: str, port: int, *, tls: str, timeouts: Timeouts) -> Session:
        """Connect, read the banner, EHLO, STARTTLS per policy; raises SessionFailed."""
        client = aiosmtplib.SMTP(
            hostname=ip, port=port, local_hostname=self._helo,
            source_address=(self._bind, 0) if self._bind else None,
            timeout=timeouts.connect, start_tls=False, use_tls=False, validate_certs=False,
        )
        phase = "connect"
        try:
            await client.connect()
            phase = "ehlo"
            try:
                await client.ehlo(timeout=timeouts.ehlo)
            except SMTPHeloError as exc:
                if exc.code == 421 or exc.code < 500:
                    raise
                await client.helo(timeout=timeouts.ehlo)
            used_tls = False
            if tls != "disabled" and client.supports_extension("starttls"):
                if tls == "opportunistic" and self._tls_broken.get(ip, 0) > self._clock():
                    pass
                else:
                    phase = "tls"
                    await self._starttls(client, mx, ip, tls, timeouts)
                    used_tls = True
                    phase = "ehlo"
                    await client.ehlo(timeout=timeouts.ehlo)
            elif tls in ("required", "verified"):
                client.close()
                raise SessionFailed(Reply(None, f"TLS is {tls} for {mx} but the server does not offer STARTTLS", "tls"))
        except SessionFailed:
            raise
        except SMTPConnectResponseError as exc:
            client.close()
            raise SessionFailed(Reply(exc.code, _text(exc.message), "connect")) from exc
        except (SMTPException, OSError, asyncio.TimeoutError) as exc:
            client.close()
            raise SessionFailed(_failed(exc, phase)) from exc
        return Session(client, mx, ip, timeouts, used_tls)

    async def _starttls(self, client: aiosmtplib.SMTP, mx: str, ip: str, tls: str, timeouts: Timeouts) -> None:
        if tls == "verified":
            context = ssl.create_default_context()
            hostname = mx
        else:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            hostname = None
        try:
            await client.starttls(tls_context=context, server_hostname=hostname, timeout=timeouts.starttls)
        except (SMTPException, OSError, asyncio.TimeoutError, ssl.SSLError):
            if tls == "opportunistic":
                # Next time this host gets plaintext: a broken TLS stack must not block mail.
                self._tls_broken[ip] = self._clock() + 3600
            raise
