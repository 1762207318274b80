"""The broker's frames read from one buffer (mta.broker.frames): the same frames, in the same
order, with the same errors as aiormq's own reader, however the socket cuts the stream."""

import asyncio
import random

import aiormq.connection
import pamqp.frame
import pytest
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from pamqp import body, commands, header, heartbeat

from mta.broker.frames import BufferedFrames


def _frames() -> list[tuple[int, object]]:
    out = []
    for i in range(40):
        content = (b"x" * random.choice((0, 1, 100, 5000))) + str(i).encode()
        out.append((1, commands.Basic.Deliver(f"ctag-{i % 3}", i + 1, i % 2 == 0, "mta" if i % 5 else "", "bulk")))
        out.append((1, header.ContentHeader(0, len(content), commands.Basic.Properties(
            delivery_mode=2, message_id=f"m{i}", headers={"x-mta-attempts": i, "x-first-seen": "2026-12-03T00:00:00Z"}))))
        out.append((1, body.ContentBody(content)))
        if i % 7 == 0:
            out.append((0, heartbeat.Heartbeat()))
            out.append((2, commands.Basic.Ack(delivery_tag=i, multiple=True)))
    out.append((0, commands.Connection.Close(320, "CONNECTION_FORCED - broker forced connection closure", 0, 0)))
    return out


def _wire(frames) -> bytes:
    return b"".join(heartbeat.Heartbeat().marshal() if isinstance(f, heartbeat.Heartbeat) else
                    pamqp.frame.marshal(f, channel) for channel, f in frames)


async def _read(reader_class, data: bytes, cuts: list[int], count: int) -> list:
    stream = asyncio.StreamReader()
    frames = reader_class(stream)
    at = 0
    for cut in cuts + [len(data)]:
        stream.feed_data(data[at:cut])
        at = cut
    out = []
    for _ in range(count):
        weight, channel, frame = await frames.get_frame()
        out.append((weight, channel, type(frame).__name__, _fields(frame)))
    return out


def _fields(frame) -> object:
    if isinstance(frame, body.ContentBody):
        return frame.value
    if isinstance(frame, header.ContentHeader):
        return frame.body_size, dict(frame.properties)
    return {name: getattr(frame, name) for name in getattr(frame, "__slots__", ())}


@pytest.mark.parametrize("seed", range(5))
def test_the_same_frames_as_aiormqs_reader_however_the_stream_is_cut(seed) -> None:
    random.seed(seed)
    frames = _frames()
    data = _wire(frames)
    cuts = sorted(random.sample(range(1, len(data)), 60)) if seed else list(range(1, len(data)))[:2000:7]
    ours = asyncio.run(_read(BufferedFrames, data, cuts, len(frames)))
    theirs = asyncio.run(_read(aiormq.connection.FrameReceiver, data, cuts, len(frames)))
    assert ours == theirs
    assert [f[2] for f in ours[:3]] == ["Deliver", "ContentHeader", "ContentBody"]


async def _error(data: bytes, eof: bool = True) -> BaseException:
    stream = asyncio.StreamReader()
    stream.feed_data(data)
    if eof:
        stream.feed_eof()
    frames = BufferedFrames(stream)
    try:
        while True:
            await frames.get_frame()
    except BaseException as exc:  # noqa: BLE001 - the test looks at which
        return exc


def test_a_stream_ending_between_frames_ends_the_iteration_and_inside_one_is_an_error() -> None:
    whole = pamqp.frame.marshal(commands.Basic.Ack(delivery_tag=1), 1)
    assert isinstance(asyncio.run(_error(whole)), StopAsyncIteration)
    cut = asyncio.run(_error(whole + whole[:5]))
    assert isinstance(cut, AMQPConnectionError) and "unexpectedly closed" in str(cut)


def test_a_broken_frame_is_refused() -> None:
    deliver = pamqp.frame.marshal(commands.Basic.Deliver("c", 1, False, "mta", "bulk"), 1)
    assert isinstance(asyncio.run(_error(deliver[:-1] + b"\x00")), InvalidFrameError)  # no frame end
    # basic.deliver whose size says more than its arguments hold
    longer = bytearray(deliver[:-1] + b"\x00\xce")
    longer[3:7] = (int.from_bytes(deliver[3:7], "big") + 1).to_bytes(4, "big")
    error = asyncio.run(_error(bytes(longer)))
    assert isinstance(error, InvalidFrameError) and "left over" in str(error)
    assert isinstance(asyncio.run(_error(deliver[:7] + b"\xff" + deliver[8:])), InvalidFrameError)


def test_a_server_answering_with_its_own_protocol_header_is_refused() -> None:
    assert isinstance(asyncio.run(_error(b"AMQP\x00\x00\x09\x01")), ProtocolSyntaxError)
