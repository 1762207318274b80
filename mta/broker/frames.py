"""Reading the broker's frames: what the socket holds, read at once and cut into frames
from one buffer.

aiormq's reader (`aiormq.connection.FrameReceiver`) takes each frame with three awaited
`readexactly` calls into a `BytesIO`, and every frame through pamqp's generic unmarshal.
A delivery is three frames (basic.deliver, the content header, the body), and at full speed
the socket holds dozens of them at a time: here one `read` takes what is there and the frames
are cut out of it without a copy per part; a body frame becomes its `ContentBody` directly
(the body's bytes, the one copy a frame needs); the other frames still go through pamqp.
Same frames, same order, same errors as aiormq's (`install` swaps it in; the connection,
its channels and everything above see no difference).
"""

from __future__ import annotations

import logging
import struct

import aiormq.connection
import pamqp.frame
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.exceptions import PAMQPException

log = logging.getLogger("mta.broker")

HEADER = struct.Struct(">BHI")  # frame type, channel, payload size
FRAME_METHOD, FRAME_BODY = 1, 3
DELIVER = struct.pack(">I", Basic.Deliver.index)  # a method frame's first bytes: basic.deliver
DELIVERY_TAG = struct.Struct(">QB")  # basic.deliver's delivery tag and its bits (redelivered)
FRAME_END = 0xCE
READ_SIZE = 256 * 1024  # bytes asked of the socket at once


class BufferedFrames:
    """An async iterator of (bytes, channel, frame) over an asyncio StreamReader, as
    aiormq's FrameReceiver (`get_frame` for the handshake, `async for` after it)."""

    def __init__(self, reader):
        self.reader = reader
        self.started = False
        self._buffer = b""
        self._at = 0

    def __aiter__(self) -> "BufferedFrames":
        return self

    async def __anext__(self) -> tuple:
        return await self.get_frame()

    async def get_frame(self) -> tuple:
        while True:
            frame = self._cut()
            if frame is not None:
                return frame
            await self._fill()

    def _cut(self) -> tuple | None:
        """The next whole frame in the buffer, or None."""
        buffer, at = self._buffer, self._at
        if len(buffer) - at < HEADER.size:
            return None
        if not self.started:
            if buffer[at:at + 4] == b"AMQP":  # the server's protocol header: it speaks another version
                raise ProtocolSyntaxError("Unexpected AMQP protocol header")
            self.started = True
        frame_type, channel, size = HEADER.unpack_from(buffer, at)
        end = at + HEADER.size + size + 1
        if len(buffer) < end:
            return None
        self._at = end
        if buffer[end - 1] == FRAME_END:
            if frame_type == FRAME_BODY:
                return end - at, channel, ContentBody(buffer[at + HEADER.size:end - 1])
            if frame_type == FRAME_METHOD and buffer.startswith(DELIVER, at + HEADER.size):
                return end - at, channel, _deliver(buffer, at + HEADER.size + len(DELIVER), end - 1)
        try:
            return pamqp.frame.unmarshal(buffer[at:end])
        except PAMQPException as exc:
            raise InvalidFrameError(str(exc)) from exc

    async def _fill(self) -> None:
        try:
            data = await self.reader.read(READ_SIZE)
        except ConnectionRefusedError as exc:
            raise AMQPConnectionError(f"Server connection refused: {exc!r}") from exc
        except ConnectionResetError as exc:
            raise AMQPConnectionError(f"Server connection reset: {exc!r}") from exc
        except ConnectionError as exc:
            raise AMQPConnectionError(f"Server connection error: {exc!r}") from exc
        except OSError as exc:
            raise AMQPConnectionError(f"Server communication error: {exc!r}") from exc
        left = len(self._buffer) - self._at
        if not data:
            if left:
                raise AMQPConnectionError(f"Server connection unexpectedly closed. Read {left} bytes of a frame")
            raise StopAsyncIteration
        self._buffer = self._buffer[self._at:] + data if left else data
        self._at = 0


def _deliver(buffer: bytes, at: int, end: int) -> Basic.Deliver:
    """basic.deliver's arguments (consumer tag, delivery tag, redelivered, exchange, routing
    key: AMQP 0-9-1 §1.8.3.9), read in place of pamqp's generic unmarshal, which validates
    what the broker sent for every message; a frame that does not add up is refused."""
    try:
        size = buffer[at]
        consumer_tag = buffer[at + 1:at + 1 + size].decode()
        at += 1 + size
        delivery_tag, bits = DELIVERY_TAG.unpack_from(buffer, at)
        at += DELIVERY_TAG.size
        size = buffer[at]
        exchange = buffer[at + 1:at + 1 + size].decode()
        at += 1 + size
        size = buffer[at]
        routing_key = buffer[at + 1:at + 1 + size].decode()
        at += 1 + size
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise InvalidFrameError(f"basic.deliver: {exc}") from exc
    if at != end:
        raise InvalidFrameError(f"basic.deliver: {end - at} bytes left over")
    frame = Basic.Deliver.__new__(Basic.Deliver)
    frame.consumer_tag, frame.delivery_tag, frame.redelivered = consumer_tag, delivery_tag, bool(bits & 1)
    frame.exchange, frame.routing_key = exchange, routing_key
    return frame


def install() -> bool:
    """Have aiormq's connections read with BufferedFrames; False (and aiormq's own reader
    kept) when this aiormq has no FrameReceiver to replace."""
    original = getattr(aiormq.connection, "FrameReceiver", None)
    if original is None or not hasattr(original, "get_frame"):
        log.warning("this aiormq has no FrameReceiver to replace: its own frame reader is used")
        return False
    aiormq.connection.FrameReceiver = BufferedFrames
    return True
