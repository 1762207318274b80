"""Names and arguments of every exchange and queue (SPEC §1), declared idempotently.

Declaring with the same arguments twice is a no-op for RabbitMQ, so every process declares
everything at start. Changing arguments of an existing queue is refused by the broker
(PRECONDITION_FAILED), which is why they derive from few, stable settings.

Delay queues carry retries and held mail: one queue per (lane, delay), whose message TTL
dead-letters the copy back to the lane through the `mta` exchange. Quorum queues use
at-least-once dead-lettering, so a copy on its way back survives a broker crash. Delays
are rungs of a fixed ladder (shaper.retry.DELAY_LADDER), so there are at most two lanes
times its rungs of them, named `mta.wait.LANE.DELAY` (`mta.wait.bulk.10m`).

A classic delay queue nobody uses goes away by itself (`x-expires`). RabbitMQ counts that
expiry from the queue's last declaration, consumer or basic.get, not from the last publish,
and deletes the queue with whatever is in it; nobody consumes a delay queue. So its expiry
is its TTL plus a lease (an hour at least), and a process redeclares the queue before it
publishes into it once half the lease has passed since its own last declaration: every
copy in it then dead-letters (after one TTL) at least half a lease before the queue can
expire. Quorum delay queues (the default) get no expiry: on RabbitMQ 3.10 redeclaring does
not renew a quorum queue's expiry (only a consumer or basic.get does), so it would be
deleted with mail in it; the ladder bounds them instead (at most two lanes times its
rungs, a few dozen queues for good). The previous naming (`mta.delay.LANE.Ns`, without an
expiry) is left alone: those queues drain into their lanes by themselves and can be
deleted once empty.
"""

from __future__ import annotations

from collections.abc import Callable

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange

from mta.clock import SYSTEM
from mta.broker.errors import mapped
from shaper.retry import DELAY_LADDER, ladder_delay
from shaper.units import Duration

EXCHANGE = "mta"
RESULTS = "mta.results"
INVALID = "mta.invalid"
QUARANTINE = "mta.quarantine"
# Inbound mail (SPEC §8) nobody could match to a message, kept for an operator to read;
# when this many wait, or this many octets (anyone may send it, up to max_message_size
# each, and a broker short of disk blocks every publisher), more is refused by the
# broker and the sender hears 452 (and retries).
UNMATCHED = "mta.inbound.unmatched"
UNMATCHED_MAX = 10_000
UNMATCHED_MAX_BYTES = 1024**3
LANES = ("single", "bulk")


def lane_queue(lane: str) -> str:
    return f"mta.{lane}"


LEASE = 3600.0  # seconds an unused delay queue outlives its TTL, at least


def delay_queue(lane: str, seconds: int) -> str:
    return f"mta.wait.{lane}.{Duration(seconds)}"


_DELAY_NAMES = {(lane, rung): delay_queue(lane, rung) for lane in LANES for rung in DELAY_LADDER}


def delay_lease(seconds: int, lease: float = LEASE) -> float:
    """How long an unused delay queue of this TTL outlives it: long queues get longer."""
    return max(lease, float(seconds))


def _queue_args(queue_type: str, **extra) -> dict:
    args: dict = {"x-queue-type": queue_type}
    args.update(extra)
    return args


def _dead_letter_args(queue_type: str) -> dict:
    if queue_type != "quorum":
        return {}
    return {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


class Topology:
    def __init__(self, queue_type: str, delivery_limit: int, *,
                 clock: Callable[[], float] = SYSTEM.now, lease: float = LEASE):
        self.queue_type = queue_type
        self.delivery_limit = delivery_limit
        self._clock = clock
        self._lease = lease
        self._delays: dict[str, float] = {}  # delay queue -> when this process last declared it

    async def declare(self, channel: AbstractChannel) -> dict[str, AbstractExchange]:
        """Every exchange and queue; BrokerLost if the broker refuses one (the channel closes)."""
        with mapped("declaring the topology"):
            return await self._declare(channel)

    async def _declare(self, channel: AbstractChannel) -> dict[str, AbstractExchange]:
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
        await channel.declare_queue(UNMATCHED, durable=True, arguments=_queue_args(
            qt, **{"x-max-length": UNMATCHED_MAX, "x-max-length-bytes": UNMATCHED_MAX_BYTES,
                   "x-overflow": "reject-publish"}))
        self._delays.clear()
        return {"mta": mta, "results": results, "default": channel.default_exchange}

    async def ensure_delay(self, channel: AbstractChannel, lane: str, seconds: float) -> str:
        """The delay queue for this lane and delay (rounded up to a rung), declared on
        first use and again once half its lease has passed (see the module's comment)."""
        rung = ladder_delay(seconds)
        name = _DELAY_NAMES.get((lane, rung)) or delay_queue(lane, rung)
        lease = delay_lease(rung, self._lease)
        now = self._clock()
        declared = self._delays.get(name)
        if declared is None or now - declared >= lease / 2:
            args = _queue_args(
                self.queue_type,
                **{
                    "x-message-ttl": rung * 1000,
                    "x-dead-letter-exchange": EXCHANGE,
                    "x-dead-letter-routing-key": lane,
                },
                **_dead_letter_args(self.queue_type),
            )
            if self.queue_type == "classic":  # see above: a quorum queue's expiry is not renewed
                args["x-expires"] = int((rung + lease) * 1000)
            with mapped(f"declaring {name}"):  # refused: the channel closes, BrokerLost
                await channel.declare_queue(name, durable=True, arguments=args)
            self._delays[name] = now
        return name
