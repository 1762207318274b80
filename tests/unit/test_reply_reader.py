"""The SMTP reply reader: pipelined replies come back in any chunking, and are read one by one,
in order; a connection lost after some of them still yields those before the error."""

from __future__ import annotations

import asyncio

import pytest

from mta.smtp import _parse_reply, _ReplyReader

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


async def _read_all(reader: _ReplyReader, n: int) -> list[tuple[int, str]]:
    return [await reader.read(1.0) for _ in range(n)]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 13, len(PIPELINED)])
def test_reader_keeps_every_reply_whatever_the_chunks(size: int) -> None:
    async def run() -> list[tuple[int, str]]:
        loop = asyncio.get_running_loop()
        reader = _ReplyReader(loop)
        for start in range(0, len(PIPELINED), size):  # chunks arrive while the reader waits
            loop.call_soon(reader.data_received, PIPELINED[start:start + size])
        return await _read_all(reader, len(EXPECTED))

    assert asyncio.run(run()) == EXPECTED


def test_replies_before_a_lost_connection_are_still_read() -> None:
    async def run() -> tuple[list[tuple[int, str]], Exception | None]:
        reader = _ReplyReader(asyncio.get_running_loop())
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
        reader = _ReplyReader(asyncio.get_running_loop())
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
        reader = _ReplyReader(loop)
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
        reader = _ReplyReader(loop)
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
