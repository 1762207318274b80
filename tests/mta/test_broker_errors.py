"""The broker libraries' failures become ours at the edge of mta/broker (mta.broker.errors):
a closed channel or connection is `BrokerLost`, a nacked or returned publish
`PublishRefused`, so code above that folder never catches an aio-pika or aiormq type."""

from __future__ import annotations

import asyncio

import pytest
from aiormq.exceptions import ChannelInvalidStateError, ChannelPreconditionFailed, ConnectionClosed, DeliveryError
from pamqp import commands as spec

from mta.broker.errors import BrokerLost, PublishRefused, PublishTimeout, Unencodable, mapped, translate
from mta.broker.publish import BatchPublisher, Publish
from mta.broker.client import Consuming
from tests.mta.test_publish import by_hand


@pytest.mark.parametrize("raised, ours", [
    (ChannelInvalidStateError("<Channel: 1> closed"), BrokerLost),
    (ConnectionClosed(320, "CONNECTION_FORCED - broker forced connection closure"), BrokerLost),
    (ChannelPreconditionFailed("inequivalent arg 'x-message-ttl'"), BrokerLost),  # the channel closes with it
    (ConnectionResetError(104, "Connection reset by peer"), BrokerLost),
    (asyncio.TimeoutError(), BrokerLost),
    (DeliveryError(None, spec.Basic.Nack(7)), PublishRefused),
])
def test_a_broker_library_failure_becomes_ours_chained_to_it(raised, ours):
    with pytest.raises(ours) as caught:
        with mapped("publishing"):
            raise raised
    assert caught.value.__cause__ is raised
    assert str(caught.value).startswith("publishing: ")


def test_what_is_not_the_brokers_passes_through():
    error = KeyError("a bug")
    assert translate(error) is error
    with pytest.raises(KeyError):
        with mapped():
            raise error


def test_an_unencodable_publish_is_a_refused_one():
    assert issubclass(Unencodable, PublishRefused)


def test_a_batch_on_a_closed_channel_is_broker_lost():
    channel = by_hand()
    channel.is_closed = True
    with pytest.raises(BrokerLost):
        asyncio.run(BatchPublisher(channel).send([("id-1", b"")], timeout=5))


def test_a_nacked_publish_is_refused_and_an_unconfirmed_one_timed_out():
    async def scenario():
        channel = by_hand()
        publisher = BatchPublisher(channel)
        task = asyncio.create_task(publisher.publish([Publish("", "a", b"{}"), Publish("", "b", b"{}")], timeout=0.2))
        await asyncio.sleep(0)
        channel.drain()
        channel.answer(1, ack=False)  # the second never gets an answer
        return await task

    refused, unanswered = asyncio.run(scenario())
    assert isinstance(refused, PublishRefused) and isinstance(refused.__cause__, DeliveryError)
    assert isinstance(unanswered, PublishTimeout)


def test_a_batch_whose_channel_closes_under_it_is_lost_per_publish():
    async def scenario():
        channel = by_hand()
        task = asyncio.create_task(BatchPublisher(channel).publish([Publish("", "a", b"{}")], timeout=5))
        await asyncio.sleep(0)
        channel.drain()
        channel.confirmations.pop(1).set_exception(ConnectionClosed(320, "CONNECTION_FORCED"))
        return await task

    (lost,) = asyncio.run(scenario())
    assert isinstance(lost, BrokerLost)


class ClosedAiormqChannel:
    """A consuming aiormq channel that closed: every method raises as aiormq's do."""

    is_closed = True

    async def basic_ack(self, tag, multiple=False, wait=True):
        raise ChannelInvalidStateError("<Channel: 2> closed")

    async def basic_nack(self, tag, multiple=False, requeue=True, wait=True):
        raise ChannelInvalidStateError("<Channel: 2> closed")

    async def basic_qos(self, prefetch_count=None):
        raise ConnectionClosed(320, "CONNECTION_FORCED")

    async def basic_cancel(self, tag):
        raise ConnectionClosed(320, "CONNECTION_FORCED")


@pytest.mark.parametrize("call", [
    lambda c: c.basic_ack(1, multiple=True),
    lambda c: c.basic_nack(1, requeue=True),
    lambda c: c.basic_qos(prefetch_count=10),
    lambda c: c.basic_cancel("ctag-1"),
])
def test_acknowledging_or_steering_on_a_closed_consuming_channel_is_broker_lost(call):
    with pytest.raises(BrokerLost):
        asyncio.run(call(Consuming(ClosedAiormqChannel())))
