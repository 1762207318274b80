"""The clock: `now_reader()` is `now` bound once to the running loop, for readers of the time
on every message; on a fake clock it reads the fake time."""

from __future__ import annotations

import asyncio

import pytest

from mta.clock import SYSTEM
from mta.smtp.replies import _ReplyReader
from tests.fakes import FakeClock


def test_now_reader_reads_the_running_loops_time() -> None:
    async def run() -> tuple[float, float, float]:
        now = SYSTEM.now_reader()
        before = SYSTEM.now()
        read = now()
        return before, read, SYSTEM.now()

    before, read, after = asyncio.run(run())
    assert before <= read <= after


def test_now_reader_is_bound_to_the_loop_it_was_read_on() -> None:
    async def run() -> bool:
        return SYSTEM.now_reader() == asyncio.get_running_loop().time

    assert asyncio.run(run())


def test_now_reader_needs_a_running_loop() -> None:
    with pytest.raises(RuntimeError):
        SYSTEM.now_reader()


def test_a_fake_clocks_now_reader_follows_the_fake_time() -> None:
    clock = FakeClock()
    now = clock.now_reader()
    clock.advance(12.5)
    assert now() == clock.t == 1_000_012.5


def test_the_reply_readers_deadline_is_the_clocks() -> None:
    async def run() -> tuple[bool, bool]:
        clock = FakeClock()
        reader = _ReplyReader(clock)
        reader.transport = None
        reader._outstanding = 1
        read = asyncio.ensure_future(reader.read(30.0))
        await asyncio.sleep(0)
        clock.advance(29.9)
        await asyncio.sleep(0)
        early = read.done()
        clock.advance(0.2)
        await asyncio.sleep(0)
        with pytest.raises(asyncio.TimeoutError):
            await read
        return early, read.done()

    assert asyncio.run(run()) == (False, True)
