"""A destination's timing on virtual time (tests.fakes.FakeClock): its message rate, its
connection rate and its idle timeout, over hours of virtual time that take milliseconds,
with the times of every send and every close asserted exactly rather than within the
slack a real clock needs."""

from __future__ import annotations

import asyncio

from mta.config import DEFAULT_POLICY, Policy, merge
from mta.destinations.delivery import Destination
from mta.routing.mx import MxAnswer, MxHost
from shaper.allowance import HOLD_DELAYS, MAX_WAIT
from shaper.units import Rate
from tests.fakes import FakeClock, FakeConnector, FakeSession
from tests.mta.test_budget_delivery import job

ANSWER = MxAnswer((MxHost("mx.timed.test", 10, ("127.0.0.1",)),))


class TimedSession(FakeSession):
    async def finish(self, data, ahead=None):
        self.connector.sent_at.append(self.connector.clock.now())
        return await super().finish(data, ahead)

    async def close(self) -> None:
        self.connector.closed_at.append(self.connector.clock.now())
        await super().close()


class TimedConnector(FakeConnector):
    """Records the virtual time of every session opened, message sent and session closed."""

    session = TimedSession

    def __init__(self, clock: FakeClock):
        super().__init__()
        self.clock = clock
        self.sent_at: list[float] = []
        self.opened_at: list[float] = []
        self.closed_at: list[float] = []

    async def open(self, mx, ip, port, *, tls, timeouts, **options):
        self.opened_at.append(self.clock.now())
        return await super().open(mx, ip, port, tls=tls, timeouts=timeouts, **options)


def destination(clock: FakeClock, connector: TimedConnector, outcomes: list, **limits) -> Destination:
    policy = merge(DEFAULT_POLICY, Policy(**limits))
    return Destination("mx:mx.timed.test", ANSWER, policy, connector=connector, port=25,
                       done=lambda a: outcomes.append((a.job.id, a.reply.code, clock.now())),
                       hold=lambda h: outcomes.append((h.job.id, "held", h.delay)), clock=clock)


def run(scenario):
    return asyncio.run(asyncio.wait_for(scenario(), 10))


def test_a_message_rate_of_one_every_two_seconds_sends_two_seconds_apart() -> None:
    async def scenario():
        clock, outcomes = FakeClock(0.0), []
        connector = TimedConnector(clock)
        d = destination(clock, connector, outcomes, connection_limit=1, max_message_rate=Rate.parse("30/min"),
                        idle_timeout=600.0)
        for i in range(5):
            d.push(job(f"m{i}", f"u{i}@timed.test"))
        await clock.run(lambda: len(outcomes) == 5)
        d.close_idle()
        await clock.run(lambda: not d.tasks)
        return connector, outcomes

    connector, outcomes = run(scenario)
    assert [code for _, code, _ in outcomes] == [250] * 5
    assert connector.sent_at == [0.0, 2.0, 4.0, 6.0, 8.0]


def test_mail_a_slow_rate_cannot_send_soon_is_held_not_kept_waiting() -> None:
    async def scenario():
        clock, outcomes = FakeClock(0.0), []
        connector = TimedConnector(clock)
        d = destination(clock, connector, outcomes, connection_limit=1, max_message_rate=Rate.parse("1/min"),
                        idle_timeout=600.0)
        for i in range(5):
            d.push(job(f"m{i}", f"u{i}@timed.test"))
        await clock.run(lambda: len(outcomes) == 5)
        return connector, outcomes

    connector, outcomes = run(scenario)
    assert connector.sent_at == [0.0]  # the next slot is a minute away: more than anyone waits unacknowledged
    assert sorted(code for _, code, _ in outcomes if code != "held") == [250]
    held = [delay for _, code, delay in outcomes if code == "held"]
    assert len(held) == 4 and all(delay in HOLD_DELAYS and delay > MAX_WAIT for delay in held), held


def test_an_idle_session_closes_when_its_idle_timeout_runs_out() -> None:
    async def scenario():
        clock, outcomes = FakeClock(0.0), []
        connector = TimedConnector(clock)
        d = destination(clock, connector, outcomes, connection_limit=1, idle_timeout=90.0)
        d.push(job("m0", "u0@timed.test"))
        await clock.run(lambda: len(outcomes) == 1)
        await clock.run(lambda: len(connector.closed_at) == 1)
        clock.advance(1000.0)  # nothing else is pending: no other session opens or closes
        await asyncio.sleep(0)
        return connector

    connector = run(scenario)
    assert connector.opened_at == [0.0]
    assert connector.closed_at == [90.0]


def test_mail_that_arrives_within_the_idle_timeout_reuses_the_session() -> None:
    async def scenario():
        clock, outcomes = FakeClock(0.0), []
        connector = TimedConnector(clock)
        d = destination(clock, connector, outcomes, connection_limit=1, idle_timeout=90.0)
        d.push(job("m0", "u0@timed.test"))
        await clock.run(lambda: len(outcomes) == 1)
        clock.advance(89.0)
        d.push(job("m1", "u1@timed.test"))
        await clock.run(lambda: len(outcomes) == 2)
        await clock.run(lambda: len(connector.closed_at) == 1)
        return connector

    connector = run(scenario)
    assert connector.opened_at == [0.0]  # one session for both
    assert connector.sent_at == [0.0, 89.0]
    assert connector.closed_at == [89.0 + 90.0]  # the idle timeout counts from the last message


def test_a_connection_rate_spaces_the_sessions() -> None:
    async def scenario():
        clock, outcomes = FakeClock(0.0), []
        connector = TimedConnector(clock)
        d = destination(clock, connector, outcomes, connection_limit=1, max_deliveries_per_connection=1,
                        max_connection_rate=Rate.parse("1/10s"), idle_timeout=60.0)
        for i in range(3):
            d.push(job(f"m{i}", f"u{i}@timed.test"))
        await clock.run(lambda: len(outcomes) == 3)
        return connector

    connector = run(scenario)
    assert connector.opened_at == [0.0, 10.0, 20.0]


def test_setting_the_system_clock_back_does_not_stall_the_message_rate() -> None:
    async def scenario():
        clock, outcomes = FakeClock(0.0, wall=1_700_000_000.0), []
        connector = TimedConnector(clock)
        d = destination(clock, connector, outcomes, connection_limit=1, max_message_rate=Rate.parse("30/min"),
                        idle_timeout=600.0)
        clock.call_at(3.0, lambda: setattr(clock, "wall_offset", clock.wall_offset - 3600))  # an hour back
        for i in range(5):
            d.push(job(f"m{i}", f"u{i}@timed.test"))
        await clock.run(lambda: len(outcomes) == 5)
        return connector, outcomes

    connector, outcomes = run(scenario)
    assert [code for _, code, _ in outcomes] == [250] * 5  # none held for an hour's "wait"
    assert connector.sent_at == [0.0, 2.0, 4.0, 6.0, 8.0]
