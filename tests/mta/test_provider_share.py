"""A provider's limits bound all its domains together (mta.routing.rules,
mta.destinations.share, mta.destinations.delivery over a fake connector): a domain entry
under a provider lowers its limits, never raises them, and its sessions count against the
provider's connection_limit."""

from __future__ import annotations

import asyncio
import time

from mta.clock import SYSTEM
from mta.config import parse_config
from mta.destinations.delivery import Destination
from mta.routing.mx import MxAnswer, MxHost
from mta.routing.rules import Rules
from mta.destinations.share import Shares
from tests.fakes import FakeConnector
from tests.mta.test_budget_delivery import job, until

CONFIG = {
    "default": {"max_connection_rate": "10000/s"},
    "providers": {"big": {"mx_suffix": [".big.example"], "connection_limit": 3, "max_message_rate": "100/s"}},
    "domains": {
        "a.example": {"connection_limit": 2},
        "b.example": {"connection_limit": 2},
        "greedy.example": {"connection_limit": 50, "max_message_rate": "1000/s", "max_connection_rate": "1/s"},
    },
}
BIG = MxAnswer((MxHost("mx.big.example", 10, ("127.0.0.1",)),))
ELSEWHERE = MxAnswer((MxHost("mx.other.example", 10, ("127.0.0.1",)),))


def test_a_domain_entry_under_a_provider_stays_in_its_group_and_under_its_limits() -> None:
    rules = Rules(parse_config(CONFIG))
    a = rules.resolve("a.example", BIG)
    assert (a.key, a.group, a.group_policy.connection_limit, a.policy.connection_limit) == ("domain:a.example", "provider:big", 3, 2)
    assert a.policy.max_message_rate.per_second == 100.0  # the provider's, inherited
    greedy = rules.resolve("greedy.example", BIG)
    assert greedy.policy.connection_limit == 3  # lowered to the provider's
    assert greedy.policy.max_message_rate.per_second == 100.0
    assert greedy.policy.max_connection_rate.per_second == 1.0  # lower than the provider's: kept
    other = rules.resolve("x.big-domain.example", BIG)
    assert (other.key, other.group) == ("provider:big", "provider:big")
    alone = rules.resolve("greedy.example", ELSEWHERE)  # its MX is not the provider's
    assert (alone.group, alone.policy.connection_limit) == (None, 50)


def destinations(rules: Rules, shares: Shares, connector: FakeConnector, outcomes: list, domains):
    made = {}
    for domain in domains:
        resolved = rules.resolve(domain, BIG)
        made[domain] = Destination(resolved.key, BIG, resolved.policy, connector=connector, port=25,
                                   done=lambda a: outcomes.append((a.job.id, a.reply.code)),
                                   hold=lambda h: outcomes.append((h.job.id, "held")),
                                   clock=SYSTEM, share=shares.of(resolved))
    return made


def test_two_domains_of_2_connections_under_a_provider_of_3_never_open_4() -> None:
    async def scenario():
        rules, shares, connector, outcomes = Rules(parse_config(CONFIG)), Shares(SYSTEM.now), FakeConnector(), []
        connector.answering.clear()  # sessions stay busy until every destination asked for its connections
        dests = destinations(rules, shares, connector, outcomes, ["a.example", "b.example", "c.example"])
        n = 0
        for domain, dest in dests.items():
            for i in range(6):
                dest.push(job(f"{domain}-{i}", f"u{i}@{domain}"))
                n += 1
        await until(lambda: connector.open_now == 3)
        await asyncio.sleep(0.05)
        assert connector.open_now == 3
        connector.answering.set()
        await until(lambda: len(outcomes) == n)
        for dest in dests.values():
            dest.close_idle()
        await asyncio.gather(*(t for d in dests.values() for t in d.tasks))
        return connector, outcomes, dests, shares

    connector, outcomes, dests, shares = asyncio.run(scenario())
    assert sorted(code for _, code in outcomes) == [250] * 18
    assert connector.peak == 3
    assert {mx for mx, _ in connector.sent} == {"mx.big.example"}
    assert len(shares) == 1


def test_an_idle_session_of_one_domain_gives_way_to_another_domain_of_the_provider() -> None:
    async def scenario():
        rules, shares, connector, outcomes = Rules(parse_config(CONFIG)), Shares(SYSTEM.now), FakeConnector(), []
        dests = destinations(rules, shares, connector, outcomes, ["a.example", "b.example", "c.example"])
        a, b = dests["a.example"], dests["b.example"]
        for i in range(2):
            a.push(job(f"a-{i}", f"u{i}@a.example"))
        c = dests["c.example"]
        c.push(job("c-0", "u0@c.example"))
        await until(lambda: len(outcomes) == 3)
        assert a.share.in_use == 3 and connector.open_now == 3  # a: 2 idle sessions, c: 1 (idle 60 s)
        b.push(job("b-0", "u0@b.example"))
        await asyncio.wait_for(until(lambda: len(outcomes) == 4), 2)  # not after a's 60 s idle timeout
        for dest in dests.values():
            dest.close_idle()
        await asyncio.gather(*(t for d in dests.values() for t in d.tasks))
        return connector, outcomes

    connector, outcomes = asyncio.run(scenario())
    assert sorted(code for _, code in outcomes) == [250] * 4
    assert connector.peak <= 3


def test_reload_changes_the_provider_limit() -> None:
    rules, shares = Rules(parse_config(CONFIG)), Shares(SYSTEM.now)
    share = shares.of(rules.resolve("a.example", BIG))
    assert share.limit == 3
    changed = dict(CONFIG, providers={"big": {"mx_suffix": [".big.example"], "connection_limit": 5}})
    shares.reload(Rules(parse_config(changed)))
    assert share.limit == 5


def test_the_providers_message_rate_bounds_its_destinations_together() -> None:
    async def scenario():
        rules, shares, connector, outcomes = Rules(parse_config(CONFIG)), Shares(SYSTEM.now), FakeConnector(), []
        dests = destinations(rules, shares, connector, outcomes, ["a.example", "b.example", "c.example"])
        started = time.monotonic()
        for domain, dest in dests.items():
            for i in range(20):
                dest.push(job(f"{domain}-{i}", f"u{i}@{domain}"))
        await until(lambda: len(outcomes) == 60)
        took = time.monotonic() - started
        for dest in dests.values():
            dest.close_idle()
        await asyncio.gather(*(t for d in dests.values() for t in d.tasks))
        return took

    took = asyncio.run(scenario())
    # 60 messages at the provider's 100/s (a burst of 5) take 0.55 s at least; each
    # destination alone may send 100/s, so without the shared rate they took 0.2 s.
    assert took >= 0.5, took


def test_a_busy_domain_gives_a_session_to_another_domain_of_the_provider() -> None:
    """a.example has a backlog on both its sessions, c.example (the provider's own
    destination) on the third: b.example's message does not wait for those backlogs to drain."""

    async def scenario():
        rules, shares, connector, outcomes = Rules(parse_config(CONFIG)), Shares(SYSTEM.now), FakeConnector(), []
        dests = destinations(rules, shares, connector, outcomes, ["a.example", "b.example", "c.example"])
        for i in range(40):
            dests["a.example"].push(job(f"a-{i}", f"u{i}@a.example"))
            dests["c.example"].push(job(f"c-{i}", f"u{i}@c.example"))
        await until(lambda: len(outcomes) >= 5)
        assert dests["a.example"].workers + dests["c.example"].workers == 3  # the provider's all
        dests["b.example"].push(job("b-0", "u0@b.example"))
        await until(lambda: len(outcomes) == 81)
        for dest in dests.values():
            dest.close_idle()
        await asyncio.gather(*(t for d in dests.values() for t in d.tasks))
        return connector, outcomes

    connector, outcomes = asyncio.run(scenario())
    order = [i for i, _ in outcomes]
    assert order.index("b-0") < 20, order  # at 100/s: within 0.2 s, not after the 0.8 s of backlog
    assert connector.peak <= 3


def test_single_sessions_take_turns_at_reconnects() -> None:
    """A provider of one connection: a.example's backlog has it; b.example gets it at a's
    next reconnect (after 5 messages), not after the whole backlog."""
    config = dict(CONFIG, providers={"big": {"mx_suffix": [".big.example"], "connection_limit": 1,
                                             "max_message_rate": "100/s", "max_deliveries_per_connection": 5}})

    async def scenario():
        rules, shares, connector, outcomes = Rules(parse_config(config)), Shares(SYSTEM.now), FakeConnector(), []
        dests = destinations(rules, shares, connector, outcomes, ["a.example", "b.example"])
        for i in range(40):
            dests["a.example"].push(job(f"a-{i}", f"u{i}@a.example"))
        dests["b.example"].push(job("b-0", "u0@b.example"))  # a's worker holds the one session
        await until(lambda: len(outcomes) == 41)
        for dest in dests.values():
            dest.close_idle()
        await asyncio.gather(*(t for d in dests.values() for t in d.tasks))
        return connector, outcomes

    connector, outcomes = asyncio.run(scenario())
    order = [i for i, _ in outcomes]
    assert order.index("b-0") == 5, order
    assert connector.peak == 1
