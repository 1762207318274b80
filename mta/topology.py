"""Names and arguments of every exchange and queue (SPEC §1), declared idempotently.

Declaring with the same arguments twice is a no-op for RabbitMQ, so every process declares
everything at start. Changing arguments of an existing queue is refused by the broker
(PRECONDITION_FAILED), which is why they derive from few, stable settings.

Delay queues carry retries and held mail: one queue per (lane, delay), whose message TTL
dead-letters the copy back to the lane through the `mta` exchange. Quorum queues use
at-least-once dead-lettering, so a copy on its way back survives a broker crash.
Poison messages: a lane's quorum `x-delivery-limit` dead-letters a message that was
redelivered too often (it crashed the MTA each time) into `mta.quarantine`.
"""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange

EXCHANGE = "mta"
RESULTS = "mta.results"
INVALID = "mta.invalid"
QUARANTINE = "mta.quarantine"
LANES = ("single", "bulk")


def lane_queue(lane: str) -> str:
    return f"mta.{lane}"


def delay_queue(lane: str, seconds: int) -> str:
    return f"mta.delay.{lane}.{seconds}s"


def _queue_args(queue_type: str, **extra) -> dict:
    args: dict = {"x-queue-type": queue_type}
    args.update(extra)
    return args


def _dead_letter_args(queue_type: str) -> dict:
    if queue_type != "quorum":
        return {}
    return {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


class Topology:
    def __init__(self, queue_type: str, delivery_limit: int):
        self.queue_type = queue_type
        self.delivery_limit = delivery_limit
        self._delays: set[str] = set()

    async def declare(self, channel: AbstractChannel) -> dict[str, AbstractExchange]:
        qt = self.queue_type
        mta = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
        results = await channel.declare_exchange(RESULTS, aio_pika.ExchangeType.TOPIC, durable=True)
        for lane in LANES:
            args = _queue_args(qt)
            if qt == "quorum":
                args.update({
                    "x-delivery-limit": self.delivery_limit,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": QUARANTINE,
                    **_dead_letter_args(qt),
                })
            queue = await channel.declare_queue(lane_queue(lane), durable=True, arguments=args)
            await queue.bind(mta, routing_key=lane)
        results_queue = await channel.declare_queue(RESULTS, durable=True, arguments=_queue_args(qt))
        await results_queue.bind(results, routing_key="#")
        await channel.declare_queue(INVALID, durable=True, arguments=_queue_args(qt))
        await channel.declare_queue(QUARANTINE, durable=True, arguments=_queue_args(qt))
        self._delays.clear()
        return {"mta": mta, "results": results, "default": channel.default_exchange}

    async def ensure_delay(self, channel: AbstractChannel, lane: str, seconds: int) -> str:
        """The delay queue for this lane and delay, declared on first use."""
        name = delay_queue(lane, seconds)
        if name not in self._delays:
            args = _queue_args(
                self.queue_type,
                **{
                    "x-message-ttl": seconds * 1000,
                    "x-dead-letter-exchange": EXCHANGE,
                    "x-dead-letter-routing-key": lane,
                },
                **_dead_letter_args(self.queue_type),
            )
            await channel.declare_queue(name, durable=True, arguments=args)
            self._delays.add(name)
        return name
