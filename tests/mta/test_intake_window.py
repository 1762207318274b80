"""Taking deliveries in (mta.intake): a lane holds about `prefetch_bytes` octets, a waiting
delivery is never acknowledged by someone else's `multiple=True`, big bodies are decoded
off the event loop, and an oversize body is refused before it is read."""

from __future__ import annotations

import asyncio
import base64
import threading

import orjson
import pytest

import mta.intake.message
from mta.intake.window import LaneWindow, OffLoop, window_count
from mta.intake.message import BodyTooLarge, decode, max_body


class Delivery:
    def __init__(self, tag: int):
        self.delivery_tag = tag
        self.redelivered = False


class Message:
    def __init__(self, tag: int, size: int):
        self.body = b"x" * size
        self.delivery = Delivery(tag)


class FakeChannel:
    """The aiormq channel as the window uses it: qos, consume, cancel, ack; a script of what happened."""

    def __init__(self):
        self.script: list[tuple] = []
        self.qos = 0
        self.consumers: dict[str, int] = {}  # tag -> the prefetch it started with
        self.acked: list[tuple[int, bool]] = []
        self.is_closed = False

    async def basic_qos(self, prefetch_count: int):
        self.qos = prefetch_count

    async def basic_consume(self, queue: str, callback):
        tag = f"c{len(self.script)}"
        self.consumers[tag] = self.qos
        self.script.append(("consume", self.qos))

        class Ok:
            consumer_tag = tag

        return Ok()

    async def basic_cancel(self, tag: str):
        del self.consumers[tag]
        self.script.append(("cancel", tag))

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = False):
        self.acked.append((tag, multiple))

    async def basic_nack(self, tag: int, requeue: bool = True, wait: bool = False):
        self.acked.append((tag, False))


@pytest.mark.parametrize(("room", "estimate", "prefetch", "count"), [
    (1000, 100.0, 50, 10),
    (1000, 300.0, 50, 3),
    (1000, 2000.0, 50, 1),  # a message bigger than the room: still one at a time
    (0, 100.0, 50, 1),
    (-500, 100.0, 50, 1),
    (10**9, 1.0, 50, 50),  # never above the count prefetch
    (1000, 0.0, 50, 50),  # nothing seen yet
])
def test_window_count(room: int, estimate: float, prefetch: int, count: int) -> None:
    assert window_count(room, estimate, prefetch) == count


def _window(limit: int, prefetch: int = 100):
    channel = FakeChannel()
    taken: list[Message] = []
    window = LaneWindow(channel, "mta.bulk", prefetch, limit, taken.append)
    return window, channel, taken


async def _settle(window: LaneWindow, message: Message) -> None:
    window.book.settled(message.delivery.delivery_tag)
    await asyncio.sleep(0)  # the drain runs soon after, not inside the settler
    await asyncio.sleep(0)


def test_taken_octets_stay_within_the_bound_plus_one_message() -> None:
    async def run():
        window, channel, taken = _window(limit=1000)
        await window.start()
        assert channel.script == [("consume", 1)]  # the first message gives the size estimate
        # the broker pushes ten 300-octet deliveries before the window can stop it
        for tag in range(1, 11):
            window.on_delivery(Message(tag, 300))
            assert window.taken <= 1000 + 300
        assert [m.delivery.delivery_tag for m in taken] == [1, 2, 3, 4]  # 1,200 octets: the fourth crossed it
        assert len(window.waiting) == 6
        for _ in range(5):
            await asyncio.sleep(0)
        assert not channel.consumers  # stopped: no more pushes while over the bound
        settled = 0
        while settled < len(taken):
            await _settle(window, taken[settled])
            settled += 1
            assert window.taken <= 1000 + 300
        assert [m.delivery.delivery_tag for m in taken] == list(range(1, 11))  # in order, nothing lost
        assert window.unsettled == window.taken == 0
        for _ in range(5):
            await asyncio.sleep(0)
        # consuming again, with a count that fits the bound at 300 octets a message
        (count,) = channel.consumers.values()
        assert 1 <= count <= 3
        assert window.most_taken == 1200

    asyncio.run(run())


def test_small_mail_gets_the_whole_count_prefetch() -> None:
    async def run():
        window, channel, taken = _window(limit=64 * 1024 * 1024, prefetch=1000)
        await window.start()
        window.on_delivery(Message(1, 1000))
        for _ in range(5):
            await asyncio.sleep(0)
        assert list(channel.consumers.values()) == [1000]
        assert channel.script == [("consume", 1), ("cancel", "c0"), ("consume", 1000)]

    asyncio.run(run())


def test_after_big_mail_the_count_grows_back() -> None:
    async def run():
        window, channel, taken = _window(limit=100_000, prefetch=1000)
        await window.start()
        window.on_delivery(Message(1, 50_000))
        await _settle(window, taken[0])
        for _ in range(5):
            await asyncio.sleep(0)
        assert list(channel.consumers.values()) == [1]  # 50,000-octet mail: one at a time
        tag = 2
        while list(channel.consumers.values()) != [1000] and tag < 2000:
            window.on_delivery(Message(tag, 10))
            await _settle(window, taken[-1])
            tag += 1
        assert list(channel.consumers.values()) == [1000]
        assert tag < 1000  # the estimate forgets the big message within a few hundred small ones

    asyncio.run(run())


def test_a_waiting_delivery_is_never_acknowledged_with_a_later_one() -> None:
    async def run():
        window, channel, taken = _window(limit=100)
        await window.start()
        for tag in (1, 2, 3):
            window.on_delivery(Message(tag, 200))
        assert [m.delivery.delivery_tag for m in taken] == [1]
        assert window.book.open == 3  # entered on arrival: a multiple=True ack stops before them
        settled, i = set(), 0
        while i < len(taken):
            message = taken[i]
            i += 1
            settled.add(message.delivery.delivery_tag)
            await _settle(window, message)
            await window.book.flush()
            assert all(tag in settled for tag, _ in channel.acked), (channel.acked, settled)
        assert [m.delivery.delivery_tag for m in taken] == [1, 2, 3]
        assert [tag for tag, _ in channel.acked] == [1, 2, 3]

    asyncio.run(run())


def test_shutdown_gives_waiting_deliveries_back() -> None:
    async def run():
        window, channel, taken = _window(limit=100)
        await window.start()
        for tag in (1, 2, 3):
            window.on_delivery(Message(tag, 200))
        for _ in range(5):
            await asyncio.sleep(0)
        await window.cancel()
        assert not channel.consumers
        assert window.book.requeue == [2, 3]
        assert window.unsettled == 200
        window.on_delivery(Message(4, 10))  # still in flight when the consumer stopped
        assert [m.delivery.delivery_tag for m in taken] == [1]
        for _ in range(5):
            await asyncio.sleep(0)
        assert not channel.consumers  # and no new consumer after a shutdown

    asyncio.run(run())


# --------------------------------------------------------------------------- off the loop


def test_off_loop_runs_in_another_thread_and_answers_on_the_loop() -> None:
    async def run():
        loop_thread = threading.get_ident()
        outcomes = []
        done = asyncio.Event()

        def then(outcome):
            outcomes.append((outcome, threading.get_ident()))
            done.set()

        OffLoop().run(lambda: threading.get_ident(), (), then)
        await done.wait()
        (ran_in, answered_in), = outcomes
        assert ran_in != loop_thread
        assert answered_in == loop_thread

        done.clear()
        OffLoop().run(lambda: 1 / 0, (), then)
        await done.wait()
        assert isinstance(outcomes[-1][0], ZeroDivisionError)

    asyncio.run(run())


# --------------------------------------------------------------------------- size before decoding


def _doc(**fields) -> bytes:
    doc = {"recipient": "user@example.com", "envelope": "", **fields}
    return orjson.dumps(doc)


def test_oversize_base64_is_measured_not_decoded(monkeypatch) -> None:
    payload = b"Subject: big\n\n" + b"x" * 3000
    raw = _doc(mime_b64=base64.b64encode(payload).decode())
    monkeypatch.setattr(mta.intake.message.base64, "b64decode", lambda *a, **k: pytest.fail("decoded"))
    monkeypatch.setattr(mta.intake.message, "canonical_data", lambda *a: pytest.fail("converted"))
    job = decode(raw, {}, "bulk", 0.0, max_size=1000)
    assert job.size == len(payload)
    assert job.data == b""


@pytest.mark.parametrize("padding", [0, 1, 2])
def test_base64_size_is_exact(padding: int) -> None:
    payload = b"x" * (3000 + (3 - padding) % 3)
    job = decode(_doc(mime_b64=base64.b64encode(payload).decode()), {}, "bulk", 0.0, max_size=10)
    assert job.size == len(payload)


def test_oversize_mime_is_not_converted(monkeypatch) -> None:
    mime = "Subject: big\n\n" + ("word " * 400 + "\n") * 10  # long lines: shorten would run
    monkeypatch.setattr(mta.intake.message, "canonical_data", lambda *a: pytest.fail("converted"))
    job = decode(_doc(mime=mime), {}, "bulk", 0.0, max_size=1000)
    assert job.size == len(mime.encode())


def test_a_body_too_large_for_any_acceptable_message_is_refused_unread(monkeypatch) -> None:
    raw = _doc(mime="x" * 20_000)
    monkeypatch.setattr(mta.intake.message, "_DECODER", None)  # any parse would fail on this
    monkeypatch.setattr(mta.intake.message, "OTHER_FIELDS", 100)
    with pytest.raises(BodyTooLarge, match="max_message_size"):
        decode(raw, {}, "bulk", 0.0, max_size=1000)


def test_the_body_bound_admits_the_worst_escaping_of_an_acceptable_message() -> None:
    # A MIME of max_size control characters, each written \u0001 (6 octets), still gets read.
    mime = "\x01" * 1000
    raw = _doc(mime=mime)
    assert len(raw) <= max_body(1000)
    assert decode(raw, {}, "bulk", 0.0, max_size=1000).size == 1000


# --------------------------------------------------------------------------- the engine's side


class _Book:
    def __init__(self, closed: bool = False):
        self.channel = type("Channel", (), {"is_closed": closed})()
        self.requeue: list[int] = []


class _Settler:
    def __init__(self):
        self.invalid_calls: list[tuple] = []

    def invalid(self, body, headers, reason, book, tag, lane, now, echo=True):
        self.invalid_calls.append((reason, tag, echo))


def _engine():
    from mta.config import Config
    from mta.engine import Engine

    engine = Engine(Config())
    engine.settler = _Settler()
    routed = []
    engine.intake._admit = lambda job, book, tag, redelivered: routed.append((job, tag))
    return engine, routed


def test_a_big_body_decoded_after_its_session_ended_is_left_to_the_broker() -> None:
    engine, routed = _engine()
    book = _Book(closed=True)
    engine.intake._decoded(object(), b"{}", None, "bulk", book, 7, False, 0.0)
    assert routed == [] and book.requeue == [] and engine.settler.invalid_calls == []


def test_a_big_body_decoded_during_shutdown_goes_back_unstarted() -> None:
    engine, routed = _engine()
    engine.stopping = True
    book = _Book()
    engine.intake._decoded(object(), b"{}", None, "bulk", book, 7, False, 0.0)
    assert routed == [] and book.requeue == [7]


def test_a_big_body_that_broke_the_decoder_is_invalid_with_the_reason() -> None:
    # whatever went wrong, the delivery is settled now: it must not hold the lane until
    # the broker's consumer_timeout, nor loop through redeliveries
    engine, routed = _engine()
    book = _Book()
    engine.intake._decoded(RecursionError("deep " + "x" * 100_000), b"{}", None, "bulk", book, 7, False, 0.0)
    assert routed == [] and book.requeue == []
    [(reason, tag, echo)] = engine.settler.invalid_calls
    assert tag == 7 and reason.startswith("intake failed: RecursionError: deep xxx") and len(reason) <= 600


def test_a_body_that_broke_the_decoder_on_the_loop_is_invalid_with_the_reason(monkeypatch) -> None:
    import decimal

    import mta.intake.accept

    def broken(*args):
        raise OverflowError("integer division result too large for a float")

    engine, routed = _engine()
    book = _Book()
    monkeypatch.setattr(mta.intake.accept, "decode", broken)
    engine.intake.accept(b"{}", {"x-death": [], "x-mta-first": decimal.Decimal("1e400")}, "bulk", book, 7)
    assert routed == [] and book.requeue == []
    assert engine.settler.invalid_calls == [
        ("intake failed: OverflowError: integer division result too large for a float", 7, True)]
    assert engine.counts["invalid"] == 1


def test_a_body_refused_unread_is_not_read_for_its_result() -> None:
    engine, routed = _engine()
    book = _Book()
    engine.intake._decoded(BodyTooLarge("too large"), b"{}", None, "bulk", book, 7, False, 0.0)
    assert engine.settler.invalid_calls == [("too large", 7, False)]
    engine.intake._decoded(mta.intake.message.InvalidMessage("bad"), b"{}", None, "bulk", book, 8, False, 0.0)
    assert engine.settler.invalid_calls[-1] == ("bad", 8, True)


def test_a_consumer_that_starts_during_shutdown_is_cancelled() -> None:
    async def run():
        window, channel, taken = _window(limit=64 * 1024 * 1024, prefetch=1000)
        await window.start()
        gate = asyncio.Event()
        consume = channel.basic_consume

        async def slow_consume(queue, callback):
            await gate.wait()
            return await consume(queue, callback)

        channel.basic_consume = slow_consume
        window.on_delivery(Message(1, 1000))  # asks for a larger consumer
        for _ in range(5):
            await asyncio.sleep(0)
        await window.cancel()  # SIGTERM while the new consumer is being started
        gate.set()
        for _ in range(10):
            await asyncio.sleep(0)
        assert not channel.consumers

    asyncio.run(run())
