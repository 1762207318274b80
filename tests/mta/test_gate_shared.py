"""A destination tells the other nodes what it learns, and takes what they learned
(mta.destinations.gate): pauses and throttles with their end in wall time, never an
operator's pause (shared through mta.ops.kept), never back what it was told."""

from __future__ import annotations

import asyncio
import time

from mta.clock import SYSTEM
from mta.config import DEFAULT_POLICY, Policy, merge
from mta.destinations.budget import Budget
from mta.destinations.delivery import Destination
from mta.routing.mx import MxAnswer, MxHost
from shaper.state import Mode
from shaper.units import Rate
from tests.fakes import FakeConnector


class Told:
    def __init__(self) -> None:
        self.facts: list = []

    def tell(self, key, kind, fact) -> None:
        self.facts.append((key, kind, fact))

    def want(self, key) -> None:
        pass


class Cluster:
    def __init__(self) -> None:
        self.shared = Told()


def destination(cluster) -> Destination:
    answer = MxAnswer((MxHost("mx.d.test", 10, ("127.0.0.1",)),))
    return Destination("domain:d.test", answer, DEFAULT_POLICY, connector=FakeConnector(), port=25,
                       done=lambda a: None, hold=lambda h: None, clock=SYSTEM, budget=Budget(10), cluster=cluster)


def test_a_pause_and_a_throttle_are_told_with_their_end_in_wall_time() -> None:
    async def scenario():
        cluster = Cluster()
        d = destination(cluster)
        now = d._time.now()
        d.core.suspend(now, now + 60, "dead: no host answered")
        (key, kind, fact), = cluster.shared.facts
        assert (key, kind, fact["reason"]) == ("domain:d.test", "pause", "dead: no host answered")
        assert abs(fact["until"] - (time.time() + 60)) < 1
        d.resume("over")
        limits = merge(Policy(), Policy(connection_limit=1, max_message_rate=Rate.parse("10/min")))
        d.core.back_off(d._time.now(), d._time.now() + 600, limits, "throttle: 4.7.28")
        key, kind, fact = cluster.shared.facts[-1]
        assert kind == "throttle" and fact["limits"]["connection_limit"] == 1
        assert fact["limits"]["max_message_rate"] == {"count": 10.0, "period": 60.0}
    asyncio.run(scenario())


def test_an_operators_pause_and_what_another_node_told_are_not_told_again() -> None:
    async def scenario():
        cluster = Cluster()
        d = destination(cluster)
        d.suspend(time.time() + 60, "operator: mta pause")
        assert cluster.shared.facts == []
        d.resume("operator: mta resume")
        d.gate.apply("pause", {"until": time.time() + 30, "reason": "dead"})
        assert d.core.state.mode is Mode.PAUSED and "seen by another node" in d.core.state.reason
        d.gate.apply("window", {"until": time.time() + 300, "connections": 2})
        assert d.gate._limits() == [("domain:d.test", 2)]
        d.gate.apply("pause", {"until": time.time() - 1, "reason": "over"})  # ended: nothing
        assert cluster.shared.facts == []
    asyncio.run(scenario())


def test_a_fact_no_node_of_ours_wrote_is_refused_and_bounded() -> None:
    async def scenario():
        d = destination(Cluster())
        for bad in ({"until": "soon"}, {"reason": "no end"}, {"until": time.time() + 60, "connections": "x"}):
            try:
                d.gate.apply("window", bad)
            except (ValueError, TypeError, KeyError):
                pass
            else:
                raise AssertionError(f"{bad} was taken")
        d.gate.apply("window", {"until": time.time() + 10 ** 9, "connections": 0})
        connections, until = d.gate.learned
        assert connections == 1 and until - d._time.now() <= 300  # at least one, for 5 minutes at most
        d.gate.apply("pause", {"until": time.time() + 10 ** 9, "reason": "forever"})
        assert d.core.state.until - d._time.now() <= 30 * 86400
    asyncio.run(scenario())


def test_a_too_fast_learned_here_is_told_and_one_told_is_taken() -> None:
    async def scenario():
        cluster = Cluster()
        d = destination(cluster)
        d.core.adaptive.on_rate_limited(d._time.now(), 20.0)  # as a "too fast" reply does
        d.gate.pushed_back(None, True)
        (key, kind, fact), = cluster.shared.facts
        assert kind == "rate" and fact["per_second"] == d.core.adaptive.current < 100.0
        other = destination(Cluster())
        other.gate.apply("rate", fact)
        assert other.core.per_second == fact["per_second"]
    asyncio.run(scenario())
