"""aiosmtpd's command loop and reply writer (as of 1.4.6), minus what a listener pays for
every command and never uses.

aiosmtpd writes two log records per command line (each line first searched for an AUTH
secret to hide) and one per reply, at DEBUG and INFO on `mail.log`, which the listeners
keep at ERROR; and it starts a new timer per command. At 1 KB a message is four commands
and four replies, and that came to several per cent of a listener's CPU. Here the same
checks run in the same order with the same answers; the warnings are kept; the idle timer
is armed once and, when it fires early, waits the rest.
"""

from __future__ import annotations

import asyncio
import collections

from aiosmtpd.smtp import ALLOWED_BEFORE_STARTTLS, BOGUS_LIMIT, MISSING, SMTP, TLSSetupException
from aiosmtpd.smtp import log as mail_log
from aiosmtpd.proxy_protocol import get_proxy

from mta.clock import SYSTEM, Clock


class Commands(SMTP):
    """SMTP with a leaner `_handle_client`, `push` and idle timer; the rest is aiosmtpd's."""

    clock: Clock = SYSTEM  # the idle timer's (a test may run it on virtual time)
    _idle_until = 0.0  # loop time after which a silent client is disconnected
    _timer_at: float | None = None  # when the armed idle timer fires (None: none armed)

    def _reset_timeout(self, duration: float | None = None) -> None:
        until = self.clock.now() + (duration or self._timeout_duration)
        self._idle_until = until
        if self._timer_at is None or self._timer_at > until:
            if self._timeout_handle is not None:
                self._timeout_handle.cancel()
            self._timer_at = until
            self._timeout_handle = self.clock.call_at(until, self._timeout_cb)

    def _timeout_cb(self) -> None:
        self._timer_at = None
        if self.clock.now() < self._idle_until:  # the client spoke since the timer was armed
            self._timer_at = self._idle_until
            self._timeout_handle = self.clock.call_at(self._idle_until, self._timeout_cb)
            return
        super()._timeout_cb()

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str):
            status = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        writer = self._writer
        writer.write(status + b"\r\n")
        await writer.drain()

    async def _handle_client(self) -> None:
        if self._proxy_timeout is not None and not await self._proxy():
            return
        await self.push(f"220 {self.hostname} {self.__ident__}")
        if self._enforce_call_limit:
            call_limit = collections.defaultdict(lambda: self._call_limit_default, self._call_limit_base)
        else:
            call_limit = {}
        self._bogus_budget = BOGUS_LIMIT
        while self.transport is not None:
            try:
                line = await self._read_line()
                parsed = None if line is None else await self._parse(line)
                if parsed is not None:
                    await self._command(*parsed, len(line), call_limit)
            except (asyncio.CancelledError, ConnectionResetError):
                self._writer.close()
                raise
            except Exception as error:
                await self._failed(error)

    async def _proxy(self) -> bool:
        """The PROXY header first, within its own timeout; False: the connection is closed."""
        session = self.session
        self._reset_timeout(self._proxy_timeout)
        session.proxy_data = await get_proxy(self._reader)
        if session.proxy_data:
            status = await self._call_handler_hook("PROXY", session.proxy_data)
        else:
            mail_log.warning("%r invalid PROXY handshake", session.peer)
            status = False
        if status is MISSING or not status:
            self.transport.close()
            return False
        self._reset_timeout()
        return True

    async def _read_line(self) -> bytes | None:
        """The next command line without its line end; None when it was too long (read to
        its end, answered)."""
        reader = self._reader
        try:
            return (await reader.readuntil()).rstrip(b"\r\n")
        except asyncio.LimitOverrunError as error:
            await reader.read(error.consumed)
            while True:
                try:
                    await reader.readuntil()
                    break
                except asyncio.LimitOverrunError as e:
                    await reader.read(e.consumed)
            await self.push("500 Command line too long")
            return None

    async def _parse(self, line: bytes) -> tuple[str, str | None] | None:
        """(command, argument) of a line; None when it was answered with an error."""
        if not line:
            await self.push("500 Error: bad syntax")
            return None
        command_bytes, _, arg_bytes = line.partition(b" ")
        try:
            command = command_bytes.upper().decode(encoding="ascii")
        except UnicodeDecodeError:
            await self.push("500 Error: bad syntax")
            return None
        if not arg_bytes:
            return command, None
        arg_bytes = arg_bytes.strip()
        if self.enable_SMTPUTF8:
            return command, str(arg_bytes, encoding="utf-8", errors="surrogateescape")
        try:
            return command, str(arg_bytes, encoding="ascii", errors="strict")
        except UnicodeDecodeError:
            await self.push("500 Error: strict ASCII mode")
            return None

    async def _command(self, command: str, arg: str | None, length: int, call_limit) -> None:
        """Limits and state checks, then the command's method (`length`: the line's)."""
        session = self.session
        if length > (self.command_size_limits[command] if session.extended_smtp else self.command_size_limit):
            await self.push("500 Command line too long")
            return
        if not self._tls_handshake_okay and command != "QUIT":
            await self.push("554 Command refused due to lack of security")
            return
        if self.require_starttls and not self._tls_protocol and command not in ALLOWED_BEFORE_STARTTLS:
            await self.push("530 Must issue a STARTTLS command first")
            return
        if self._enforce_call_limit:
            budget = call_limit[command]
            if budget < 1:
                mail_log.warning("%r over limit for %s", session.peer, command)
                await self.push(f"421 4.7.0 {command} sent too many times")
                self.transport.close()
                return
            call_limit[command] = budget - 1
        method = self._smtp_methods.get(command)
        if method is None:
            mail_log.warning("%r unrecognised: %s", session.peer, command)
            self._bogus_budget -= 1
            if self._bogus_budget < 1:
                mail_log.warning("%r too many bogus commands", session.peer)
                await self.push("502 5.5.1 Too many unrecognized commands, goodbye.")
                self.transport.close()
                return
            await self.push(f'500 Error: command "{command}" not recognized')
            return
        self._reset_timeout()  # a valid command
        await method(arg)

    async def _failed(self, error: Exception) -> None:
        """A command raised: the handler's answer; a failed TLS handshake ends the connection."""
        status = None
        try:
            status = await self.handle_exception(error)
        except Exception as inner_error:
            try:
                mail_log.exception("%r Exception in handle_exception()", self.session.peer)
                status = f"500 Error: ({inner_error.__class__.__name__}) {inner_error}"
            except Exception:
                status = "500 Error: Cannot describe error"
        finally:
            if isinstance(error, TLSSetupException):
                if self.transport is not None:  # the TLS layer may have reported the loss first
                    self.transport.close()
                    self.connection_lost(error)
            else:
                await self.push(status)
