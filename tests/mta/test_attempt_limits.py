"""One delivery attempt is bounded (mta.destinations.delivery over a fake connector): at most
`max_mx_hosts` hosts and `max_addresses_per_mx` addresses each, a deadline over connecting
and the transaction, no long wait for `max_connection_rate` with the delivery
unacknowledged, and a job cancelled at shutdown before its content went out is given back
to the broker without an attempt."""

from __future__ import annotations

import asyncio
import time

import orjson

from mta.clock import SYSTEM
from mta.config import DEFAULT_POLICY, Policy, Smtp, merge
from mta.destinations.delivery import Destination
from mta.intake.message import decode
from mta.routing.mx import MxAnswer, MxHost
from mta.smtp.client import Reply
from shaper.units import Rate
from tests.fakes import FakeConnector


class Book:
    """What the engine's acknowledgement book offers a destination: the requeue list, and
    whether its channel is gone."""

    closed = False

    def __init__(self) -> None:
        self.requeue: list[int] = []

    def closed_now(self) -> bool:
        return self.closed


def job(i: int, book: Book | None = None, lane: str = "bulk"):
    body = orjson.dumps({"id": f"m{i}", "recipient": f"u{i}@ten.test", "envelope": "s@sender.test",
                         "mime": f"Subject: {i}\r\n\r\nhello\r\n"})
    made = decode(body, {}, lane, time.time())
    made.delivery = (book or Book(), i)
    return made


TEN_HOSTS = MxAnswer(tuple(MxHost(f"mx{h}.ten.test", h, tuple(f"192.0.2.{10 * h + a}" for a in range(3)))
                           for h in range(10)))
FAST = merge(DEFAULT_POLICY, Policy(max_connection_rate=Rate.parse("10000/s"), max_message_rate=Rate.parse("10000/s")))


def destination(connector: FakeConnector, outcomes: list, policy: Policy = FAST, smtp: Smtp = Smtp(),
                answer: MxAnswer = TEN_HOSTS) -> Destination:
    return Destination("mx:ten", answer, policy, connector=connector, port=25,
                       done=lambda a: outcomes.append((a.job.id, a.reply)),
                       hold=lambda h: outcomes.append((h.job.id, f"held {h.delay}s")),
                       clock=SYSTEM, smtp=smtp)


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


def test_an_attempt_tries_at_most_5_hosts_and_2_addresses_each() -> None:
    async def scenario():
        connector, outcomes = FakeConnector("refuse"), []
        dest = destination(connector, outcomes)
        dest.push(job(1))
        await until(lambda: outcomes)
        await asyncio.gather(*dest.tasks)
        return connector, outcomes

    connector, outcomes = asyncio.run(scenario())
    assert connector.tried == [(f"mx{h}.ten.test", f"192.0.2.{10 * h + a}") for h in range(5) for a in range(2)]
    assert [(i, r.code, r.phase) for i, r in outcomes] == [("m1", None, "connect")]  # one deferral


def test_host_and_address_limits_come_from_smtp_config() -> None:
    async def scenario():
        connector, outcomes = FakeConnector("refuse"), []
        dest = destination(connector, outcomes, smtp=Smtp(max_mx_hosts=3, max_addresses_per_mx=1))
        dest.push(job(1))
        await until(lambda: outcomes)
        await asyncio.gather(*dest.tasks)
        return connector

    assert [mx for mx, _ in asyncio.run(scenario()).tried] == ["mx0.ten.test", "mx1.ten.test", "mx2.ten.test"]


def test_blackholed_hosts_end_the_attempt_by_its_deadline() -> None:
    async def scenario():
        connector, outcomes = FakeConnector("blackhole"), []
        policy = merge(FAST, Policy(connect_timeout=0.2))
        dest = destination(connector, outcomes, policy, Smtp(delivery_deadline=0.5))
        started = time.monotonic()
        dest.push(job(1))
        await until(lambda: outcomes)
        took = time.monotonic() - started
        await asyncio.gather(*dest.tasks)
        return connector, outcomes, took

    connector, outcomes, took = asyncio.run(scenario())
    assert len(connector.tried) == 3
    # 0.2 + 0.2 + what the deadline left of 0.5 s (less, on a loaded machine): never 3 x 0.2
    assert connector.connect_timeouts[:2] == [0.2, 0.2] and connector.connect_timeouts[2] <= 0.1 + 1e-6
    assert took < 0.5 + 0.5  # and the attempt ended (the clock here is the real one)
    (i, reply), = outcomes
    assert reply.code is None and "delivery deadline of 500ms reached" in reply.text


def test_a_receiver_that_never_answers_the_content_ends_by_the_deadline() -> None:
    async def scenario():
        connector, outcomes = FakeConnector("ok", hang_data=True), []
        dest = destination(connector, outcomes, smtp=Smtp(delivery_deadline=0.3))
        started = time.monotonic()
        dest.push(job(1))
        await until(lambda: outcomes)
        took = time.monotonic() - started
        await until(lambda: not dest.tasks)
        return connector, outcomes, took

    connector, outcomes, took = asyncio.run(scenario())
    assert 0.3 <= took < 0.4
    (i, reply), = outcomes
    assert (reply.code, reply.phase) == (None, "message")
    assert reply.text == "delivery deadline of 300ms reached waiting for the reply to the message"
    assert connector.sessions[0].closed and not connector.sessions[0].usable


def test_a_deadline_that_cuts_in_after_the_reply_to_the_dot_arrived_unread_keeps_it() -> None:
    async def scenario():
        connector, outcomes = FakeConnector("ok", hang_data=True, dot_unread=True), []
        dest = destination(connector, outcomes, smtp=Smtp(delivery_deadline=0.3))
        dest.push(job(1))
        await until(lambda: outcomes)
        await until(lambda: not dest.tasks)
        return outcomes

    (i, reply), = asyncio.run(scenario())
    assert (reply.code, reply.text) == (250, "2.0.0 ok")  # the receiver has it: not to be sent again


def test_the_deadline_is_per_message_on_a_reused_session() -> None:
    async def scenario():
        connector, outcomes = FakeConnector("ok"), []
        dest = destination(connector, outcomes, merge(FAST, Policy(connection_limit=1)),
                           Smtp(delivery_deadline=0.2))
        for i in range(3):
            dest.push(job(i))
            await until(lambda: len(outcomes) == i + 1)
            await asyncio.sleep(0.15)  # together longer than one deadline: each message has its own
        dest.close_idle()
        await asyncio.gather(*dest.tasks)
        return connector, outcomes

    connector, outcomes = asyncio.run(scenario())
    assert [r.code for _, r in outcomes] == [250, 250, 250]
    assert len(connector.sessions) == 1


def test_a_far_connection_slot_holds_the_mail_instead_of_waiting() -> None:
    async def scenario():
        connector, outcomes = FakeConnector("ok"), []
        policy = merge(FAST, Policy(connection_limit=1, max_deliveries_per_connection=1,
                                    max_connection_rate=Rate.parse("1/min")))
        dest = destination(connector, outcomes, policy)
        for i in range(5):
            dest.push(job(i))
        await asyncio.wait_for(until(lambda: len(outcomes) == 5), 5)
        await asyncio.wait_for(until(lambda: not dest.tasks), 5)
        return connector, outcomes

    connector, outcomes = asyncio.run(scenario())
    delivered = [i for i, r in outcomes if isinstance(r, Reply) and r.code == 250]
    held = [r for _, r in outcomes if isinstance(r, str)]
    assert len(delivered) == 1 and len(connector.sessions) == 1
    assert len(held) == 4 and all(int(r.split()[1][:-1]) >= 60 for r in held), held  # back after the slot


def test_with_a_session_up_a_far_connection_slot_leaves_the_mail_to_it() -> None:
    async def scenario():
        connector, outcomes = FakeConnector("ok"), []
        policy = merge(FAST, Policy(connection_limit=3, max_connection_rate=Rate.parse("1/min"),
                                    idle_timeout=0.2))
        dest = destination(connector, outcomes, policy)
        dest.core.connection_rate.set_rate(Rate.parse("1/min"), SYSTEM.now(), burst=1)
        for i in range(20):
            dest.push(job(i))
        await asyncio.wait_for(until(lambda: len(outcomes) == 20), 5)
        await asyncio.wait_for(until(lambda: not dest.tasks), 5)
        return connector, outcomes

    connector, outcomes = asyncio.run(scenario())
    assert sorted(r.code for _, r in outcomes) == [250] * 20
    assert len(connector.sessions) == 1


def test_shutdown_gives_back_a_job_that_never_reached_the_wire() -> None:
    async def scenario():
        connector, outcomes = FakeConnector("ok"), []
        connector.connecting.clear()  # connecting takes forever
        dest = destination(connector, outcomes)
        book = Book()
        dest.push(job(7, book))
        await until(lambda: connector.tried)
        for task in dest.tasks:
            task.cancel()  # the engine's shutdown at the end of its grace period
        await asyncio.gather(*dest.tasks, return_exceptions=True)
        return outcomes, book

    outcomes, book = asyncio.run(scenario())
    assert outcomes == []  # no attempt, no result
    assert book.requeue == [7]  # the broker delivers it again


def test_shutdown_counts_an_attempt_whose_content_went_out() -> None:
    async def scenario():
        connector, outcomes = FakeConnector("ok", hang_data=True), []
        dest = destination(connector, outcomes)
        book = Book()
        dest.push(job(7, book))
        await until(lambda: connector.sessions)
        await asyncio.sleep(0.01)
        for task in dest.tasks:
            task.cancel()
        await asyncio.gather(*dest.tasks, return_exceptions=True)
        return outcomes, book

    outcomes, book = asyncio.run(scenario())
    assert [(i, r.text) for i, r in outcomes] == [("m7", "delivery interrupted (shutdown)")]
    assert book.requeue == []


def test_a_shutdown_after_the_reply_to_the_dot_arrived_unread_keeps_it_as_the_outcome() -> None:
    async def scenario():
        connector, outcomes = FakeConnector("ok", hang_data=True, dot_unread=True), []
        dest = destination(connector, outcomes)
        book = Book()
        dest.push(job(7, book))
        await until(lambda: connector.sessions)
        await asyncio.sleep(0.01)
        for task in dest.tasks:  # cancelled before the worker got to read the reply
            task.cancel()
        await asyncio.gather(*dest.tasks, return_exceptions=True)
        return outcomes, book

    outcomes, book = asyncio.run(scenario())
    assert [(i, r.code, r.text) for i, r in outcomes] == [("m7", 250, "2.0.0 ok")]
    assert book.requeue == []
