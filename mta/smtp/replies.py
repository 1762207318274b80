"""Reading the receiver's replies once the transaction starts: `_ReplyReader` takes the
connection over from aiosmtplib after EHLO/STARTTLS, so that the replies to pipelined
commands, arriving in one chunk, are all kept and each is credited to its command."""

from __future__ import annotations

import asyncio
from collections import deque

from mta.clock import SYSTEM, Clock
from mta.smtp.client import ProtocolViolation

MAX_REPLY = 65536  # octets of one (multi-line) reply: EHLO's is the longest seen, ~1 KB


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
        # The clock's now_reader() and the loop's create_future, bound by the first read
        # (on the session's loop): a message's transaction reads twice.
        self._now = None
        self._new_future = None
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

    def peek(self) -> tuple[int, str] | None:
        """The next reply if it has arrived, without reading it (None: not yet)."""
        return self._replies[0] if self._replies else None

    async def read(self, timeout: float) -> tuple[int, str]:
        if not self._replies:
            if self._error is not None:
                raise self._error
            now = self._now
            if now is None:
                now = self._now = self._clock.now_reader()
                self._new_future = asyncio.get_running_loop().create_future
            self._waiter = waiter = self._new_future()
            self._deadline = deadline = now() + timeout
            if self._timer is None or self._timer_at > deadline:
                if self._timer is not None:
                    self._timer.cancel()
                self._timer_at = deadline
                self._timer = self._clock.call_at(deadline, self._expire)
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
