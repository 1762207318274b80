"""The destinations of one provider drain through its one shared message rate, so what they
keep in memory unacknowledged is bounded by that rate together, not by each one's own
(mta.destinations.delivery with mta.destinations.share over a fake connector): N domains
under a slow provider keep what it sends within `MAX_WAIT`, the rest is held; no job waits
for the shared rate beyond `MAX_WAIT`; and waiting for a rate slot is never counted as
(part of) a delivery attempt."""

from __future__ import annotations

import asyncio

from mta.clock import SYSTEM
from mta.config import Smtp, parse_config
from mta.destinations.delivery import Destination
from mta.routing.mx import MxAnswer, MxHost
from mta.routing.rules import Rules
from mta.destinations.share import Shares
from mta.smtp.client import Reply
from shaper.allowance import HOLD_DELAYS, MAX_WAIT, allowance
from tests.fakes import FakeClock, FakeConnector, FakeSession
from tests.mta.test_budget_delivery import job, until

BIG = MxAnswer((MxHost("mx.big.example", 10, ("127.0.0.1",)),))


def config(rate: str, domains: int, connections: int = 10) -> dict:
    return {"default": {"max_connection_rate": "10000/s"},
            "providers": {"big": {"mx_suffix": [".big.example"], "connection_limit": connections,
                                  "max_message_rate": rate}},
            "domains": {f"d{i}.example": {} for i in range(domains)}}


class Ledger:
    """Every job's fate: pushed, held (no attempt) or settled (an attempt, with its reply)."""

    def __init__(self) -> None:
        self.pushed = 0
        self.held: dict[str, int] = {}
        self.done: dict[str, Reply] = {}
        self.most_in_memory = 0

    def on_done(self, attempt) -> None:
        assert attempt.job.id not in self.done, f"{attempt.job.id} settled twice"
        self.done[attempt.job.id] = attempt.reply

    def on_hold(self, held) -> None:
        self.held[held.job.id] = held.delay

    @property
    def in_memory(self) -> int:
        return self.pushed - len(self.held) - len(self.done)

    def push(self, dest: Destination, j) -> None:
        self.pushed += 1
        dest.push(j)
        self.most_in_memory = max(self.most_in_memory, self.in_memory)


def destinations(cfg: dict, n: int, ledger: Ledger, clock, connector, smtp: Smtp = Smtp(), give_back=None):
    rules, shares = Rules(parse_config(cfg)), Shares(clock.now)
    made = []
    for i in range(n):
        resolved = rules.resolve(f"d{i}.example", BIG)
        made.append(Destination(resolved.key, BIG, resolved.policy, connector=connector, port=25,
                                done=ledger.on_done, hold=ledger.on_hold, clock=clock, smtp=smtp,
                                share=shares.of(resolved), give_back=give_back))
    return made, shares


def waiting_counted(dests: list[Destination]) -> bool:
    """The share's count of messages without a rate slot is its destinations' own."""
    share = dests[0].share
    return share.queued == sum(d.queued + d._unpaced for d in dests)


def test_twenty_domains_under_a_slow_provider_keep_what_it_sends_within_max_wait() -> None:
    # On virtual time (tests.fakes.FakeClock): minutes of pacing in milliseconds.
    virtual = FakeClock()

    async def scenario():
        ledger, connector = Ledger(), FakeConnector()
        dests, _ = destinations(config("1/s", 20), 20, ledger, virtual, connector)
        for k in range(50):
            for i, dest in enumerate(dests):
                ledger.push(dest, job(f"m{i}-{k}", f"u{k}@d{i}.example"))
        assert waiting_counted(dests)
        await asyncio.wait_for(virtual.run(lambda: ledger.in_memory == 0), 10)
        assert waiting_counted(dests) and dests[0].share.queued == 0
        for dest in dests:
            dest.close_idle()
        await asyncio.gather(*(t for d in dests for t in d.tasks))
        return ledger

    ledger = asyncio.run(scenario())
    # 1,000 pushed at once; the provider sends one a second: 15 s of it in memory (its
    # allowance), not 15 per domain (300, the last of them 5 min after it came).
    assert ledger.most_in_memory <= allowance(1.0, 10) + 1, ledger.most_in_memory
    assert len(ledger.held) + len(ledger.done) == 1000
    assert max(virtual.sleeps) <= MAX_WAIT, max(virtual.sleeps)
    assert all(reply.code == 250 for reply in ledger.done.values())
    assert set(ledger.held.values()) <= set(HOLD_DELAYS)
    # held by the backlog ahead of them: spread over the delays, not all back at once
    assert len(set(ledger.held.values())) > 2, sorted(set(ledger.held.values()))


def gated() -> FakeConnector:
    """Sessions open only once ``connecting`` is set."""
    connector = FakeConnector()
    connector.connecting.clear()
    return connector


def test_a_provider_slot_beyond_max_wait_is_not_waited_for() -> None:
    """The provider's rate drops (a reload) while mail of its domains is queued: a worker
    asking for a job whose slot is now minutes away gets it held, not kept waiting
    unacknowledged."""

    async def scenario():
        ledger, connector = Ledger(), FakeConnector()
        dests, shares = destinations(config("1/s", 5), 5, ledger, SYSTEM, connector)
        for i, dest in enumerate(dests):
            ledger.push(dest, job(f"m{i}", f"u@d{i}.example"))
        assert sum(d.queued for d in dests) == 5  # queued at 1/s; no worker has asked for one yet
        shares.reload(Rules(parse_config(config("1/min", 5))))
        await asyncio.wait_for(until(lambda: ledger.in_memory == 0), 3)
        assert waiting_counted(dests) and dests[0].share.queued == 0
        for dest in dests:
            dest.close_idle()
        await asyncio.gather(*(t for d in dests for t in d.tasks))
        return ledger

    ledger = asyncio.run(scenario())
    assert [reply.code for reply in ledger.done.values()] == [250]  # the one with the slot now
    assert len(ledger.held) == 4  # no attempt for the others: held until about their slot
    assert all(HOLD_DELAYS[0] <= delay for delay in ledger.held.values())


def test_jobs_cut_off_before_their_rate_slot_leave_the_share_s_count() -> None:
    """A shutdown while the sessions open: the jobs taken go back, and the share no longer
    counts them as waiting in memory (else its allowance would shrink for good). A job a
    worker takes has its rate slot booked at once: the share stops counting it then."""

    async def scenario():
        ledger, connector, given = Ledger(), gated(), []
        dests, _ = destinations(config("1/s", 3), 3, ledger, SYSTEM, connector, give_back=given.append)
        for i, dest in enumerate(dests):
            for k in range(3):
                ledger.push(dest, job(f"m{i}-{k}", f"u{k}@d{i}.example"))
        await until(lambda: len(connector.tried) == 9)  # each job taken by a worker of its own
        assert dests[0].share.queued == 0  # each one's slot booked (within MAX_WAIT at 1/s)
        tasks = [t for d in dests for t in d.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return dests, given

    dests, given = asyncio.run(scenario())
    assert len(given) == 9  # back to the broker, no attempt
    assert waiting_counted(dests) and dests[0].share.queued == 0


class SlowSession(FakeSession):
    """A receiver that takes a moment to answer MAIL, RCPT and DATA."""

    async def begin(self, commands) -> Reply | None:
        await asyncio.sleep(0.01)
        return None


class SlowConnector(FakeConnector):
    session = SlowSession


def test_waiting_for_the_provider_rate_is_not_part_of_the_attempt() -> None:
    """Three domains at a provider's 5/s: their messages wait 0, 0.2 and 0.4 s for their
    slots, longer than the 150 ms an attempt may take; each attempt's deadline starts after."""

    async def scenario():
        ledger, connector = Ledger(), SlowConnector()
        dests, _ = destinations(config("5/s", 3, connections=3), 3, ledger, SYSTEM, connector,
                                Smtp(delivery_deadline=0.15))
        for i, dest in enumerate(dests):
            ledger.push(dest, job(f"m{i}", f"u@d{i}.example"))
        await asyncio.wait_for(until(lambda: ledger.in_memory == 0), 3)
        for dest in dests:
            dest.close_idle()
        await asyncio.gather(*(t for d in dests for t in d.tasks))
        return ledger

    ledger = asyncio.run(scenario())
    assert {i: (r.code, r.text) for i, r in ledger.done.items()} == {
        f"m{i}": (250, "2.0.0 ok") for i in range(3)}
    assert ledger.held == {}
