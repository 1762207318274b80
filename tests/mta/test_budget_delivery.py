"""The connection budget carried out by destinations (mta.destinations.budget with
mta.destinations.delivery), over a fake connector: never more sessions open than the budget,
idle ones closed to make room, waiting is not an attempt, single mail is not stuck behind
bulk."""

from __future__ import annotations

import asyncio
import time

import orjson

from mta.clock import SYSTEM
from mta.destinations.budget import Budget
from mta.config import DEFAULT_POLICY, Policy, merge
from mta.destinations.delivery import Destination
from mta.intake.message import decode
from mta.routing.mx import MxAnswer, MxHost
from shaper.units import Rate
from tests.fakes import FakeConnector


def job(i: str, recipient: str, lane: str = "bulk"):
    body = orjson.dumps({"id": i, "recipient": recipient, "envelope": "s@sender.test",
                         "mime": f"Subject: {i}\r\n\r\nhello\r\n"})
    return decode(body, {}, lane, time.time())


POLICY = merge(DEFAULT_POLICY, Policy(connection_limit=2, idle_timeout=60.0, max_connection_rate=Rate.parse("10000/s")))


def destinations(n: int, budget: Budget, connector: FakeConnector, outcomes: list):
    made = []
    for d in range(n):
        answer = MxAnswer((MxHost(f"mx.d{d}.test", 10, ("127.0.0.1",)),))
        made.append(Destination(f"mx:mx.d{d}.test", answer, POLICY, connector=connector, port=25,
                                done=lambda a: outcomes.append((a.job.id, a.reply.code)),
                                hold=lambda h: outcomes.append((h.job.id, "held")),
                                clock=SYSTEM, budget=budget))
    return made


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


async def shutdown(dests) -> None:
    tasks = [t for d in dests for t in d.tasks]
    for d in dests:
        d.close_idle()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)


def test_many_destinations_share_a_small_budget() -> None:
    async def scenario():
        connector, outcomes = FakeConnector(), []
        budget = Budget(3, reserve=0)
        dests = destinations(20, budget, connector, outcomes)
        for round_ in range(2):
            for d, dest in enumerate(dests):
                dest.push(job(f"{round_}-{d}", f"u{round_}@d{d}.test"))
        await until(lambda: len(outcomes) == 40)
        await shutdown(dests)
        return connector, outcomes, budget

    connector, outcomes, budget = asyncio.run(scenario())
    assert sorted(code for _, code in outcomes) == [250] * 40  # every message once, no deferral
    assert len({i for i, _ in outcomes}) == 40
    assert connector.peak <= 3
    assert {mx for mx, _ in connector.sent} == {f"mx.d{d}.test" for d in range(20)}
    assert budget.waits > 0 and budget.evictions > 0
    assert budget.in_use == 0 and connector.open_now == 0


def test_an_idle_connection_makes_room_for_a_waiting_destination() -> None:
    async def scenario():
        connector, outcomes = FakeConnector(), []
        budget = Budget(1, reserve=0)
        first, second = destinations(2, budget, connector, outcomes)
        first.push(job("a", "u@d0.test"))
        await until(lambda: len(outcomes) == 1)
        assert (first.connected, budget.in_use) == (1, 1)  # kept open, idle, for idle_timeout
        second.push(job("b", "u@d1.test"))  # the budget is full: the idle one is closed for it
        await until(lambda: len(outcomes) == 2)
        result = (first.connected, second.connected, budget.evictions, connector.peak)
        await shutdown([first, second])
        return result, outcomes

    (first_open, second_open, evictions, peak), outcomes = asyncio.run(scenario())
    assert outcomes == [("a", 250), ("b", 250)]
    assert (first_open, second_open, evictions, peak) == (0, 1, 1, 1)


def test_single_mail_is_not_stuck_behind_bulk_that_fills_the_budget() -> None:
    async def scenario():
        connector, outcomes = FakeConnector(), []
        budget = Budget(4, reserve=1)
        dests = destinations(5, budget, connector, outcomes)
        connector.answering.clear()  # bulk sessions hang in DATA: no connection goes idle
        for d in range(4):
            dests[d].push(job(f"bulk-{d}", f"u@d{d}.test"))
        await until(lambda: len(connector.opened) == 3)
        await asyncio.sleep(0.01)
        bulk_open = len(connector.opened)  # bulk stops at 3: the last slot is the single lane's
        dests[4].push(job("single", "u@d4.test", lane="single"))
        await until(lambda: "mx.d4.test" in connector.opened)
        connector.answering.set()
        await until(lambda: len(outcomes) == 5)
        await shutdown(dests)
        return bulk_open, outcomes

    bulk_open, outcomes = asyncio.run(scenario())
    assert bulk_open == 3
    assert sorted(code for _, code in outcomes) == [250] * 5


def test_a_busy_destination_yields_at_reconnect_to_one_without_a_connection() -> None:
    async def scenario():
        connector, outcomes = FakeConnector(), []
        budget = Budget(2, reserve=0)
        busy, other = destinations(2, budget, connector, outcomes)
        busy.apply(merge(POLICY, Policy(max_deliveries_per_connection=1)))
        connector.answering.clear()  # both of busy's sessions hang in DATA: none goes idle
        for i in range(10):
            busy.push(job(f"busy-{i}", f"u{i}@d0.test"))
        await until(lambda: busy.connected == 2)
        other.push(job("other", "u@d1.test"))  # waits: the budget is busy's
        await asyncio.sleep(0.01)
        waited = (other.connected, budget.waiting)
        connector.answering.set()  # busy reconnects after each message: one reconnect gives its slot up
        await until(lambda: len(outcomes) == 11)
        await shutdown([busy, other])
        return waited, outcomes, budget.yields

    waited, outcomes, yields = asyncio.run(scenario())
    assert waited == (0, 1)
    assert sorted(code for _, code in outcomes) == [250] * 11
    assert [i for i, _ in outcomes].index("other") <= 3 and yields >= 1
