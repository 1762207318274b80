"""The SMTP side of a listener: aiosmtpd's protocol (>= 1.4.6: no SMTP smuggling, no
command injection after STARTTLS) with what submission needs on top.

* Implicit TLS (465-style): aiosmtpd knows TLS only through STARTTLS, so it would never
  offer AUTH on a connection that was TLS from its first byte (its issues #274/#281). A
  connection whose transport is TLS counts as TLS here; AUTH is still never offered or
  taken in plain text.
* AUTH PLAIN and LOGIN checked off the event loop, and failures cost the client: a growing
  delay, the connection closed after 3, and budgets per address and per user name across
  connections (mta.submission.lockout). The user name is logged, the password never.
* DATA read in one piece up to the lone dot (`<CRLF>.<CRLF>` only: a bare `<LF>.<LF>` or
  `<CR>.<CR>` ends nothing), without aiosmtpd's 1000-octet line limit (applications write
  long HTML lines; the engine folds them for the wire), with the source's size limit.
* PIPELINING advertised: commands are read and answered strictly in order.
* STARTTLS through the event loop's own `start_tls` (uvloop's TLS layer is compiled;
  aiosmtpd drives asyncio's pure-Python one, and writing replies through it was the
  largest share of a listener's CPU at 1 KB). What aiosmtpd guarantees stays: plain text
  sent behind the STARTTLS line is dropped, and the session starts anew (RFC 3207 §4.2).
* The command loop, replies and idle timer without aiosmtpd's per-command logging and
  timers (mta.submission.commands).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, Session, TLSSetupException

from mta.submission.commands import Commands

log = logging.getLogger("mta.submission")

MAX_AUTH_FAILURES = 3  # per connection; then it is closed
PRE_AUTH_TIMEOUT = 60.0  # seconds a client no source is known for may stay silent
AUTH_DELAY = 1.0  # seconds after the first failure; the n-th waits n times this
DATA_END = b"\r\n.\r\n"
# A dot-atom local part (RFC 5322 atext, and UTF-8 for SMTPUTF8) @ a domain, in angle brackets
_SIMPLE_ADDRESS = re.compile(r"\s*<((?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|[^\x00-\x7f])+"
                             r"(?:\.(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|[^\x00-\x7f])+)*@[A-Za-z0-9.-]+)>(.*)\Z", re.DOTALL)


class Submission(Commands):
    """One client connection. `policy` (mta.submission.policy.Policy) decides; this reads
    and answers."""

    implicit_tls = False
    auth_delay = AUTH_DELAY

    def __init__(self, policy, **kwargs):
        self.policy = policy
        self.clock = policy.clock
        super().__init__(policy, **kwargs)

    refusal: str | None = None  # the answer instead of a greeting (too many connections)
    counted = False

    def _create_session(self) -> Session:
        session = super()._create_session()
        session.source = None  # mta.submission.sources.Known, once known
        session.client = None  # the client's address (behind a PROXY header: the real one)
        session.failures = 0
        session.idle = 0  # commands that did nothing before any source was known
        return session

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.refusal = self.policy.connected(self.session)
        self.counted = self.refusal is None
        if self.implicit_tls and transport.get_extra_info("ssl_object") is not None:
            self._tls_protocol = transport  # only ever tested for "is this TLS"
            self.session.ssl = transport.get_extra_info("ssl_object")

    def connection_lost(self, error) -> None:
        if self.counted:
            self.counted = False
            self.policy.disconnected(self.session)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if self.refusal is not None:
            await self.push(self.refusal)
            self.transport.close()
            return
        await super()._handle_client()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        return getaddr(self, arg)

    def _reset_timeout(self, duration: float | None = None) -> None:
        if duration is None and not self.policy.known(self.session):
            duration = PRE_AUTH_TIMEOUT
        super()._reset_timeout(duration)

    async def smtp_STARTTLS(self, arg: str):
        if self._tls_protocol is not None:
            await self.push("503 5.5.1 Already in TLS")
            return
        if arg:
            await self.push("501 Syntax: STARTTLS")
            return
        if not self.tls_context:
            await self.push("454 TLS not available")
            return
        await self.push("220 Ready to start TLS")
        plain = self._original_transport = self.transport
        # Whatever came in plain text behind the STARTTLS line is dropped (no command
        # injection); start_tls stops reading before it returns to the loop.
        self._reader._buffer.clear()
        try:
            tls = await self.loop.start_tls(plain, self, self.tls_context, server_side=True)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            raise TLSSetupException() from error
        self._tls_started(tls)

    def _tls_started(self, transport: asyncio.BaseTransport) -> None:
        """aiosmtpd's connection_made after STARTTLS: a new session (RFC 3207 §4.2) on the
        TLS transport; the client's address, failures and idle commands stay."""
        kept = (self.session.client, self.session.failures, self.session.idle)
        self._tls_protocol = transport
        self._reader._transport = self._writer._transport = self.transport = transport
        self._set_rset_state()
        self.session = self._create_session()
        self.session.peer = transport.get_extra_info("peername")
        self.session.client, self.session.failures, self.session.idle = kept
        self.session.ssl = {key: transport.get_extra_info(key)
                            for key in ("sslcontext", "peercert", "cipher", "compression", "ssl_object")}
        self._reset_timeout()
        hook = self._handle_hooks.get("STARTTLS")
        self._tls_handshake_okay = True if hook is None else hook(self, self.session, self.envelope)

    async def challenge_auth(self, challenge, encode_to_b64: bool = True, log_client_response: bool = False):
        """aiosmtpd's, but an answer too long for a line is a failed login, not a traceback."""
        try:
            return await super().challenge_auth(challenge, encode_to_b64, False)
        except (ValueError, asyncio.LimitOverrunError):  # StreamReader.readline over its limit
            await self._fail("500 5.5.6 Authentication answer too long", close=False)
            return None

    # ---- AUTH

    async def auth_PLAIN(self, _, args: list[str]) -> AuthResult:
        blob = await self._first_answer(args, "")
        if blob is None:
            return AuthResult(success=False, handled=True)  # "*", bad base64, too long: answered
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await self.push("501 5.5.2 Cannot split the PLAIN credentials")
            return AuthResult(success=False, handled=True)
        return await self._login(parts[1], parts[2])

    async def _first_answer(self, args: list[str], challenge: str) -> bytes | None:
        """The initial response on the AUTH line, or the answer to `challenge`; None when
        it was refused (answered already)."""
        if len(args) == 1:
            blob = await self.challenge_auth(challenge)
            return blob if isinstance(blob, bytes) else None
        try:
            return base64.b64decode(args[1].encode(), validate=True)
        except (binascii.Error, ValueError):
            await self.push("501 5.5.2 Cannot decode base64")
            return None

    async def auth_LOGIN(self, _, args: list[str]) -> AuthResult:
        login = await self._first_answer(args, self.AuthLoginUsernameChallenge)
        if not isinstance(login, bytes):
            return AuthResult(success=False, handled=True)
        password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if not isinstance(password, bytes):
            return AuthResult(success=False, handled=True)
        return await self._login(login, password)

    async def _login(self, login: bytes, password: bytes) -> AuthResult:
        session = self.session
        username = login.decode("utf-8", "replace")
        reply, known, close = await self.policy.login(session, username, password)
        if known is not None:
            session.source = known
            return AuthResult(success=True, auth_data=LoginPassword(login, b""))
        await self._fail(reply, close)
        return AuthResult(success=False, handled=True)

    async def _fail(self, reply: str, close: bool) -> None:
        """A failed login: the growing delay, the answer, and the end after MAX_AUTH_FAILURES."""
        session = self.session
        session.failures += 1
        if not close:
            await self.policy.clock.sleep(self.auth_delay * session.failures)
            if session.failures >= MAX_AUTH_FAILURES:
                reply, close = "421 4.7.0 Too many failed logins, closing the connection", True
        await self.push(reply)
        if close and self.transport is not None:
            self.transport.close()

    # ---- DATA

    async def smtp_DATA(self, arg: str) -> None:
        if not await data_begins(self, arg):
            return
        content, too_big = await read_data(self._reader, self.policy.size_limit(self.envelope))
        if too_big:
            status = "552 5.3.4 Message too big for this source"
            self.policy.refused(self.envelope.source, "size")
        else:
            self.envelope.content = self.envelope.original_content = content
            status = await self.policy.data(self.session, self.envelope)
        self._set_post_data_state()
        await self.push(status)


async def data_begins(server: SMTP, arg: str) -> bool:
    """DATA's checks and its 354, as aiosmtpd answers them; False when refused (answered)."""
    if await server.check_helo_needed():
        return False
    if not server.envelope.rcpt_tos:
        await server.push("503 5.5.1 Error: need RCPT command")
        return False
    if arg:
        await server.push("501 5.5.4 Syntax: DATA")
        return False
    await server.push("354 End data with <CR><LF>.<CR><LF>")
    return True


def getaddr(server: SMTP, arg: str) -> tuple[str | None, str | None]:
    """`<local@domain> PARAMS` as almost every client writes it, without aiosmtpd's RFC 5322
    header parser (a sixth of a listener's time at 1 KB); anything else goes to it."""
    m = _SIMPLE_ADDRESS.match(arg) if arg else None
    if m is None:
        return SMTP._getaddr(server, arg)
    return m[1], m[2].lstrip()


async def read_data(reader: asyncio.StreamReader, limit: int) -> tuple[bytes, bool]:
    """The message up to the lone dot, dots unstuffed (RFC 5321 §4.5.2); (b"", True) when it
    is over `limit` octets (read to its end all the same, then refused)."""
    # A CRLF in front, so a lone dot on the first line ends the data like any other.
    reader._buffer[:0] = b"\r\n"  # asyncio's StreamReader keeps its buffer here (aiosmtpd reads it too)
    saved, reader._limit = reader._limit, limit + 16
    too_big = False
    try:
        while True:
            try:
                raw = await reader.readuntil(DATA_END)
                break
            except asyncio.LimitOverrunError as exc:  # over the limit: drop what came, read on
                too_big = True
                await reader.readexactly(exc.consumed)
    finally:
        reader._limit = saved
    if too_big:
        return b"", True
    # raw is CRLF + data + ".\r\n": drop the terminator's dot line, unstuff, drop the CRLF
    return raw[:-3].replace(b"\r\n.", b"\r\n")[2:], False
