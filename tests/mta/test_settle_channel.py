"""Settling against the consuming channel's life (mta.settle), over fake channels: a
delivery whose channel closed is redelivered by the broker, so nothing may replace it (no
retry copy, no held copy); its final outcome is remembered and settles the redelivered copy
without a second send."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from mta.settle import settler
from mta.intake.message import decode
from mta.settle.acks import AckBook, abandoned
from mta.settle.settler import Settler
from mta.broker.topology import delay_queue
from tests.fakes import FakeConsumeChannel


class FakePublisher:
    """Stands in for mta.publish.BatchPublisher: every publish confirmed, each recorded."""

    published: list[tuple[str, str]] = []

    def __init__(self, channel):
        self.channel = channel

    def encode(self, publish):
        return (publish.exchange, publish.routing_key), b""

    async def send(self, encoded, timeout):
        FakePublisher.published += [where for where, _ in encoded]
        return [None] * len(encoded)


class FakeTopology:
    async def ensure_delay(self, channel, lane, seconds):
        return delay_queue(lane, seconds)


class PublishingSession:
    """A broker session as the settler sees it: its publishing channel (FakePublisher
    stands in for what publishes on it)."""

    channel = None


@pytest.fixture(autouse=True)
def fake_publisher(monkeypatch):
    FakePublisher.published = []
    monkeypatch.setattr(settler, "BatchPublisher", FakePublisher)


def job(i: str, book: AckBook, tag: int):
    body = orjson.dumps({"id": i, "recipient": f"{i}@d.test", "envelope": "s@sender.test",
                         "mime": f"Subject: {i}\r\n\r\nhello\r\n"})
    j = decode(body, {}, "bulk", time.time())
    j.delivery = (book, tag)
    j.attempts = 1
    return j


async def settled(settler: Settler) -> None:
    settler.kick()
    await asyncio.sleep(0)
    await asyncio.wait_for(settler.wait_idle(), 5)


def run(scenario):
    async def main():
        settler = Settler(PublishingSession(), FakeTopology(), 5.0)
        task = asyncio.create_task(settler.run())
        try:
            return await scenario(settler)
        finally:
            task.cancel()

    return asyncio.run(main())


def test_no_retry_or_held_copy_for_a_delivery_whose_channel_closed():
    async def scenario(settler):
        channel = FakeConsumeChannel()
        book = AckBook(channel)
        for tag in (1, 2):
            book.received(tag)
        channel.is_closed = True  # the broker closed the consuming connection
        settler.defer(job("a", book, 1), book, 1, 60)
        settler.hold(job("b", book, 2), book, 2, 30)
        await settled(settler)
        return channel

    channel = run(scenario)
    assert FakePublisher.published == []
    assert channel.acked == [] and channel.requeued == []


def test_a_settlement_whose_channel_closed_before_its_batch_went_out_is_dropped():
    async def scenario(settler):
        channel = FakeConsumeChannel()
        book = AckBook(channel)
        book.received(1)
        settler.defer(job("a", book, 1), book, 1, 60)  # queued while the channel was open
        channel.is_closed = True
        await settled(settler)

    run(scenario)
    assert FakePublisher.published == []


def test_final_outcome_on_a_closed_channel_settles_the_redelivered_copy_once():
    async def scenario(settler):
        old = FakeConsumeChannel()
        old_book = AckBook(old)
        old_book.received(7)
        old.is_closed = True
        first = job("m", old_book, 7)
        settler.final(first, old_book, 7, "delivered")  # 250 read after the channel died
        await settled(settler)
        published_before = list(FakePublisher.published)
        new = FakeConsumeChannel()
        new_book = AckBook(new)
        new_book.received(1)
        again = job("m", new_book, 1)  # the broker's redelivered copy, on the new session
        replayed = settler.replay_final(again, new_book, 1)
        await settled(settler)
        return published_before, replayed, new

    published_before, replayed, new = run(scenario)
    assert published_before == []
    assert replayed is True  # recognised: not routed, not sent again
    assert FakePublisher.published == [("mta.results", "delivered")]
    assert new.acked == [(1, True)]


def test_a_late_outcome_on_a_closed_channel_does_not_undo_a_published_result():
    async def scenario(settler):
        new = FakeConsumeChannel()
        new_book = AckBook(new)
        new_book.received(1)
        settler.final(job("m", new_book, 1), new_book, 1, "delivered")  # the redelivered copy, sent and settled
        await settled(settler)
        old = FakeConsumeChannel()
        old_book = AckBook(old)
        old.is_closed = True
        settler.final(job("m", old_book, 9), old_book, 9, "delivered")  # the old transaction ends after it
        await settled(settler)
        another = FakeConsumeChannel()
        another_book = AckBook(another)
        another_book.received(1)
        settler.replay_final(job("m", another_book, 1), another_book, 1)
        await settled(settler)

    run(scenario)
    assert FakePublisher.published == [("mta.results", "delivered")]  # one result, not two


def test_abandoned_follows_the_consuming_channel():
    channel = FakeConsumeChannel()
    book = AckBook(channel)
    j = job("a", book, 1)
    assert not abandoned(j)
    channel.is_closed = True
    assert abandoned(j)
    bare = decode(orjson.dumps({"id": "x", "recipient": "x@d.test", "envelope": "", "mime": "x"}), {}, "bulk", 0.0)
    assert not abandoned(bare)  # a job made outside the engine has no delivery


def test_a_worker_does_not_send_a_job_whose_channel_closed_while_it_waited():
    from mta.destinations.budget import Budget
    from tests.fakes import FakeConnector
    from tests.mta.test_budget_delivery import destinations

    async def scenario():
        connector, outcomes = FakeConnector(), []
        connector.connecting.clear()  # connecting takes until it is set
        (dest,) = destinations(1, Budget(4, reserve=0), connector, outcomes)
        channel = FakeConsumeChannel()
        book = AckBook(channel)
        dest.push(job("a", book, 1))
        dest.push(job("b", book, 2))
        await asyncio.sleep(0.01)  # workers connecting, each with its job
        channel.is_closed = True  # the broker is lost meanwhile: both are redelivered
        connector.connecting.set()
        await asyncio.sleep(0.05)
        dest.close_idle()
        await asyncio.wait_for(asyncio.gather(*dest.tasks), 5)
        return connector, outcomes

    connector, outcomes = asyncio.run(scenario())
    assert connector.sent == [] and outcomes == []


class ClosingPublisher(FakePublisher):
    """Confirms the batch, but the consuming channel closes while it is on its way."""

    closing: FakeConsumeChannel | None = None

    async def send(self, encoded, timeout):
        ClosingPublisher.closing.is_closed = True
        return await super().send(encoded, timeout)


def test_a_retry_copy_confirmed_as_the_channel_closed_settles_the_redelivered_original(monkeypatch):
    monkeypatch.setattr(settler, "BatchPublisher", ClosingPublisher)

    async def scenario(settler):
        old = ClosingPublisher.closing = FakeConsumeChannel()
        old_book = AckBook(old)
        old_book.received(3)
        settler.defer(job("r", old_book, 3), old_book, 3, 60)  # written, then the channel dies
        await settled(settler)
        published = list(FakePublisher.published)
        new = FakeConsumeChannel()
        book = AckBook(new)
        book.received(1)
        book.received(2)
        first = settler.replay_final(job("r", book, 1), book, 1)  # the redelivered original
        second = settler.replay_final(job("r", book, 2), book, 2)  # recognised once only
        await settled(settler)
        return published, first, second, new

    published, first, second, new = run(scenario)
    assert [key for _, key in published] == ["mta.wait.bulk.1m", "deferred"]
    assert FakePublisher.published == published  # nothing more for the original
    assert (first, second) == (True, False)
    assert new.acked == [(1, True)]
