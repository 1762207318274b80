"""Delay queues: a bounded set (one per lane and rung), each with an expiry above its TTL,
redeclared before its lease runs out so a queue with mail in it is never expired."""

from __future__ import annotations

import asyncio
import random

from mta.broker.topology import LEASE, Topology, delay_queue
from shaper.retry import DELAY_LADDER, MAX_MESSAGE_SECONDS
from tests.fakes import FakeClock

MAX_TTL_MS = 2**32 - 1


class FakeChannel:
    """Records queue declarations the way the broker would see them."""

    def __init__(self):
        self.declared: list[tuple[str, dict]] = []

    async def declare_queue(self, name, durable, arguments):
        assert durable
        self.declared.append((name, dict(arguments)))


def ensure(topology, channel, lane, seconds):
    return asyncio.run(topology.ensure_delay(channel, lane, seconds))


def test_any_delays_use_at_most_the_ladder_queues():
    rng = random.Random(20261202)
    topology, channel = Topology("quorum", 10, clock=FakeClock(1000.0).now), FakeChannel()
    delays = [rng.uniform(0.001, MAX_MESSAGE_SECONDS) for _ in range(5000)]
    delays += [rng.uniform(0.001, 120) for _ in range(5000)] + [5e6, 0.0, 1e-9]

    async def all_of_them():
        return {await topology.ensure_delay(channel, rng.choice(("single", "bulk")), d) for d in delays}

    names = asyncio.run(all_of_them())
    ladder = {delay_queue(lane, s) for lane in ("single", "bulk") for s in DELAY_LADDER}
    assert names <= ladder
    assert len(topology._delays) <= 2 * len(DELAY_LADDER)  # the registry is bounded too
    assert len(channel.declared) == len(names)  # each declared once while its lease holds


def test_every_classic_delay_queue_expires_after_its_ttl_within_rabbitmq_limits():
    topology, channel = Topology("classic", 10, clock=FakeClock(1000.0).now), FakeChannel()
    for seconds in DELAY_LADDER:
        ensure(topology, channel, "bulk", seconds)
    for name, args in channel.declared:
        ttl, expires = args["x-message-ttl"], args["x-expires"]
        assert 0 < ttl < expires <= MAX_TTL_MS, (name, args)
        assert expires - ttl >= LEASE * 1000, "an unused queue must outlive its last message"
        assert args["x-dead-letter-routing-key"] == "bulk" and args["x-dead-letter-exchange"] == "mta"
    assert [a["x-message-ttl"] for _, a in channel.declared] == [s * 1000 for s in DELAY_LADDER]


def test_a_quorum_delay_queue_never_expires():
    """RabbitMQ 3.10 does not renew a quorum queue's expiry when it is redeclared
    (tests/integration/test_delay_queues.py): it would be deleted with mail in it."""
    topology, channel = Topology("quorum", 10, clock=FakeClock(1000.0).now), FakeChannel()
    for seconds in DELAY_LADDER:
        ensure(topology, channel, "single", seconds)
    assert all("x-expires" not in args for _, args in channel.declared)
    assert all(args["x-dead-letter-strategy"] == "at-least-once" for _, args in channel.declared)


def test_a_delay_is_rounded_up_to_its_rung():
    topology, channel = Topology("classic", 10, clock=FakeClock(1000.0).now), FakeChannel()
    assert ensure(topology, channel, "single", 0.4) == "mta.wait.single.1s"
    assert ensure(topology, channel, "single", 3) == "mta.wait.single.5s"
    assert ensure(topology, channel, "bulk", 601) == "mta.wait.bulk.15m"
    assert ensure(topology, channel, "bulk", 5e6) == "mta.wait.bulk.2d"
    assert channel.declared[1][1]["x-message-ttl"] == 5000


def test_a_delay_queue_is_redeclared_before_its_lease_runs_out():
    """Publishing does not renew a queue's expiry, declaring does: every publish must
    come within half a lease of this process's last declaration."""
    clock = FakeClock(1000.0)
    topology, channel = Topology("classic", 10, clock=clock.now), FakeChannel()
    last_declared = None
    for step in range(200):
        clock.advance(97.0)  # a publish every 97 s, for more than five hours
        ensure(topology, channel, "bulk", 600)
        if len(channel.declared) and channel.declared[-1] is not last_declared:
            last_declared, declared_at = channel.declared[-1], clock.now()
        # the copy published now leaves the queue after 600 s; the queue lives until
        # its expiry counted from the last declaration
        expires_at = declared_at + last_declared[1]["x-expires"] / 1000
        assert clock.now() + 600 < expires_at - LEASE / 2 + 1e-6
    assert 5 <= len(channel.declared) <= 12, len(channel.declared)  # about every half hour, no more


def test_a_new_session_declares_again():
    topology, channel = Topology("quorum", 10, clock=FakeClock(1000.0).now), FakeChannel()
    ensure(topology, channel, "bulk", 5)
    topology._delays.clear()  # what declare() does at the start of a session
    ensure(topology, channel, "bulk", 5)
    assert len(channel.declared) == 2


class _Declared:
    async def bind(self, exchange, routing_key):
        pass


class DeclaringChannel(FakeChannel):
    """Records the whole topology's declarations."""

    default_exchange = None

    async def declare_exchange(self, name, kind, durable):
        return name

    async def declare_queue(self, name, durable, arguments):
        await super().declare_queue(name, durable, arguments)
        return _Declared()


def test_the_queue_of_unmatched_inbound_mail_is_bounded_in_octets_too():
    # Anyone may send to the inbound listener, and each kept mail may be max_message_size:
    # 10,000 of 10 MiB would be 100 GB, and a broker short of disk blocks every publisher
    # (results, retries, submissions). Beyond the bound the sender hears 452.
    from mta.broker.topology import UNMATCHED

    for queue_type in ("classic", "quorum"):
        channel = DeclaringChannel()
        asyncio.run(Topology(queue_type, 10).declare(channel))
        [args] = [a for name, a in channel.declared if name == UNMATCHED]
        assert args["x-overflow"] == "reject-publish" and args["x-max-length"] == 10_000
        assert args["x-max-length-bytes"] <= 1024**3, args
