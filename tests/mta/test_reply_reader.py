"""The SMTP reply reader: pipelined replies come back in any chunking, and are read one by one,
in order; a connection lost after some of them still yields those before the error."""

from __future__ import annotations

import asyncio

import pytest

from mta.smtp.client import ProtocolViolation
from mta.smtp.replies import MAX_REPLY, _parse_reply, _ReplyReader

# The replies to one message's end of data and to the next transaction pipelined behind it.
PIPELINED = (b"250 2.0.0 OK queued as A1\r\n"
             b"250 2.1.0 OK\r\n"
             b"250-2.1.5 OK\r\n250 2.1.5 recipient fine\r\n"
             b"354 End data with <CR><LF>.<CR><LF>\r\n")
EXPECTED = [(250, "2.0.0 OK queued as A1"), (250, "2.1.0 OK"), (250, "2.1.5 OK 2.1.5 recipient fine"),
            (354, "End data with <CR><LF>.<CR><LF>")]


def test_parse_reply_pops_one_complete_reply_at_a_time() -> None:
    buffer = bytearray(PIPELINED)
    replies = []
    while (reply := _parse_reply(buffer)) is not None:
        replies.append(reply)
    assert replies == EXPECTED
    assert buffer == b""


def test_parse_reply_leaves_an_incomplete_reply_in_the_buffer() -> None:
    buffer = bytearray(b"250-first line\r\n250 sec")
    assert _parse_reply(buffer) is None
    assert buffer == b"250-first line\r\n250 sec"
    buffer += b"ond\r\n"
    assert _parse_reply(buffer) == (250, "first line second")


def test_parse_reply_marks_garbage_with_code_zero() -> None:
    assert _parse_reply(bytearray(b"hello there\r\n"))[0] == 0


class _Wire:
    """A transport that takes every write and says nothing back."""

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass


def _reader(commands: int) -> _ReplyReader:
    """A reader whose session has sent ``commands`` commands (replies to more are unsolicited)."""
    reader = _ReplyReader()
    reader.transport = _Wire()
    reader.write(b"", commands)
    return reader


async def _read_all(reader: _ReplyReader, n: int) -> list[tuple[int, str]]:
    return [await reader.read(1.0) for _ in range(n)]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 13, len(PIPELINED)])
def test_reader_keeps_every_reply_whatever_the_chunks(size: int) -> None:
    async def run() -> list[tuple[int, str]]:
        loop = asyncio.get_running_loop()
        reader = _reader(len(EXPECTED))
        for start in range(0, len(PIPELINED), size):  # chunks arrive while the reader waits
            loop.call_soon(reader.data_received, PIPELINED[start:start + size])
        return await _read_all(reader, len(EXPECTED))

    assert asyncio.run(run()) == EXPECTED


def test_replies_before_a_lost_connection_are_still_read() -> None:
    async def run() -> tuple[list[tuple[int, str]], Exception | None]:
        reader = _reader(3)
        reader.data_received(b"250 2.0.0 OK queued\r\n250 2.1.0 OK\r\n")
        reader.connection_lost(None)
        got = await _read_all(reader, 2)
        try:
            await reader.read(1.0)
        except ConnectionError as exc:
            return got, exc
        return got, None

    got, error = asyncio.run(run())
    assert got == [(250, "2.0.0 OK queued"), (250, "2.1.0 OK")]
    assert isinstance(error, ConnectionError)


def test_a_reply_that_never_comes_times_out() -> None:
    async def run() -> None:
        reader = _reader(2)
        reader.data_received(b"250 2.0.0 OK\r\n")
        assert await reader.read(1.0) == (250, "2.0.0 OK")
        await reader.read(0.01)

    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(run())


def test_a_short_timeout_after_a_long_one_still_times_out_on_time() -> None:
    # The reader keeps one timer per connection: a read with a nearer deadline than the
    # timer's must move it.
    async def run() -> float:
        loop = asyncio.get_running_loop()
        reader = _reader(2)
        loop.call_later(0.01, reader.data_received, b"250 2.0.0 OK\r\n")
        assert await reader.read(60.0) == (250, "2.0.0 OK")
        started = loop.time()
        with pytest.raises(asyncio.TimeoutError):
            await reader.read(0.05)
        return loop.time() - started

    assert asyncio.run(run()) < 5.0


def test_a_read_outlives_the_deadline_of_the_read_before_it() -> None:
    # The timer was set for the first read's deadline; when it fires during the second
    # read, it must be set again for that one rather than time it out early.
    async def run() -> tuple[int, str]:
        loop = asyncio.get_running_loop()
        reader = _reader(2)
        loop.call_soon(reader.data_received, b"354 go ahead\r\n")
        assert await reader.read(0.05) == (354, "go ahead")
        loop.call_later(0.2, reader.data_received, b"250 2.0.0 OK\r\n")
        return await reader.read(5.0)

    assert asyncio.run(run()) == (250, "2.0.0 OK")


@pytest.mark.parametrize("raw", [b"250 OK\r\n", b"250\r\n", b"250 \r\n", b"25\r\n", b"2\r\n", b"\r\n",
                                 b"ab\r\n250 x\r\n", b"354 go\n", b"550 5.1.1 caf\xc3\xa9 \xff\r\n",
                                 b"250-a\r\n250-b\r\n250 c\r\n", b"25-a\r\n250 b\r\n"])
def test_one_line_fast_path_reads_like_the_general_one(raw: bytes) -> None:
    def general(buffer: bytearray) -> tuple[int, str] | None:  # the line-by-line reading
        lines, offset = [], 0
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
            code = 0
        del buffer[:offset]
        return code, " ".join(lines)

    fast, slow = bytearray(raw), bytearray(raw)
    assert _parse_reply(fast) == general(slow)
    assert fast == slow


# ---- replies nobody asked for, and floods


def test_a_reply_with_no_command_outstanding_ends_the_session() -> None:
    async def run() -> None:
        reader = _reader(1)
        reader.data_received(b"250 2.1.0 OK\r\n")
        assert await reader.read(1.0) == (250, "2.1.0 OK")
        reader.data_received(b"250 2.0.0 unsolicited\r\n")  # nothing outstanding
        with pytest.raises(ProtocolViolation, match="unsolicited reply 250"):
            await reader.read(1.0)
        with pytest.raises(ProtocolViolation):
            reader.write(b"MAIL FROM:<>\r\n")  # nothing more goes out on it

    asyncio.run(run())


def test_one_reply_too_many_in_a_chunk_discards_them_all() -> None:
    # Which of the two answers the command cannot be known: neither is credited.
    async def run() -> None:
        reader = _reader(1)
        reader.data_received(b"250 2.0.0 extra\r\n550 5.7.1 the real answer\r\n")
        with pytest.raises(ProtocolViolation):
            await reader.read(1.0)

    asyncio.run(run())


def test_an_unsolicited_421_is_a_close_and_keeps_what_came_before() -> None:
    # RFC 5321 §3.8: a server shutting down may send 421 without being asked.
    async def run() -> None:
        reader = _reader(1)
        reader.data_received(b"250 2.0.0 OK queued\r\n421 4.3.2 shutting down\r\n")
        assert await reader.read(1.0) == (250, "2.0.0 OK queued")
        with pytest.raises(ConnectionError, match="closing the connection: 421") as caught:
            await reader.read(1.0)
        assert not isinstance(caught.value, ProtocolViolation)

    asyncio.run(run())


def test_a_flood_of_replies_is_not_queued() -> None:
    async def run() -> _ReplyReader:
        reader = _reader(3)
        for _ in range(1000):  # a hostile MX: 64 MB of "250 OK" lines in 64 KB chunks
            reader.data_received(b"250 OK\r\n" * 8192)
        return reader

    reader = asyncio.run(run())
    assert len(reader._replies) == 0  # the excess made the queued replies meaningless
    assert len(reader._buffer) == 0
    assert isinstance(reader._error, ProtocolViolation)


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_a_flood_of_continuation_lines_costs_one_reply_of_buffer(chunk: int) -> None:
    async def run() -> tuple[_ReplyReader, int]:
        reader = _reader(1)
        line = b"250-" + b"x" * 60 + b"\r\n"
        flood = line * ((4 * MAX_REPLY) // len(line))
        largest = 0
        for start in range(0, len(flood), chunk):
            reader.data_received(flood[start:start + chunk])
            largest = max(largest, len(reader._buffer))
        with pytest.raises(ProtocolViolation, match="longer than"):
            await reader.read(1.0)
        return reader, largest

    reader, largest = asyncio.run(run())
    assert largest <= MAX_REPLY + chunk
    assert len(reader._buffer) == 0


def test_continuation_lines_arriving_one_by_one_are_scanned_once() -> None:
    # Each chunk looks at its own bytes only: a long multi-line reply in small chunks is
    # read in linear time (counted: calls of _parse_reply, once per complete reply).
    async def run() -> tuple[tuple[int, str], int]:
        import mta.smtp.replies as smtp
        calls = 0
        original = smtp._parse_reply

        def counting(*args):
            nonlocal calls
            calls += 1
            return original(*args)

        smtp._parse_reply = counting
        try:
            reader = _reader(1)
            for i in range(500):
                reader.data_received(b"250-line %d\r\n" % i)
            reader.data_received(b"250 last\r\n")
            return await reader.read(1.0), calls
        finally:
            smtp._parse_reply = original

    reply, calls = asyncio.run(run())
    assert reply[0] == 250 and reply[1].startswith("line 0 line 1 ") and reply[1].endswith("line 499 last")
    assert calls == 1


def test_a_reply_arrived_and_not_yet_read_can_be_peeked_at_without_reading_it():
    async def scenario():
        reader = _ReplyReader()
        reader.transport = None
        reader._outstanding = 1  # the end of data, written
        assert reader.peek() is None
        reader.data_received(b"250 2.0.0 queued as 1\r\n")
        peeked = reader.peek()
        return peeked, await reader.read(1.0)

    peeked, read = asyncio.run(scenario())
    assert peeked == read == (250, "2.0.0 queued as 1")
