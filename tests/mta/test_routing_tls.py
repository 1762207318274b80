"""The router and the recipient domains' TLS policies (mta.routing.table, mta.tls.service):
mail of a domain never looked at waits for that one look, all of it in one list, at most
`mta_sts.wait`, then goes as if there were no policy; later mail is routed at once with
the policy in force; an enforced policy that no MX host matches defers in the tls phase."""

import asyncio
import time

import orjson

from mta.config import parse_config
from mta.intake.message import decode
from mta.routing.mx import MxAnswer, MxHost
from mta.routing.rules import Rules
from mta.routing.table import Router
from mta.tls.cache import StsPolicies
from mta.tls.fetch import Fetched
from mta.tls.policy import Policy
from mta.tls.service import TlsPolicies

ANSWER = MxAnswer((MxHost("mx.example.com", 10, ("192.0.2.1",)),))


class Resolver:
    def cached(self, domain):
        return ANSWER

    async def resolve(self, domain):
        return ANSWER


class SlowFetcher:
    def __init__(self, delay: float, policy: Policy):
        self.delay, self.policy, self.looks = delay, policy, 0

    async def fetch_txt(self, domain):
        self.looks += 1
        await asyncio.sleep(self.delay)
        return Fetched("1", None, 60.0)

    async def fetch_policy(self, domain):
        return self.policy


def _job(i: int, domain: str = "example.com"):
    body = orjson.dumps({"id": f"m{i}", "recipient": f"u{i}@{domain}", "envelope": "s@sender.test",
                         "mime": "Subject: x\r\n\r\nhello\r\n"})
    return decode(body, {}, "bulk", time.time())


def _run(fetcher, wait: float, jobs: int, after: float = 0.0):
    rules = Rules(parse_config({}))  # tls: dane, the default
    routed, deferred = [], []

    async def scenario():
        tls = TlsPolicies(StsPolicies(fetcher, time.time, None), wait)
        router = Router(Resolver(), rules, lambda j, a, r: routed.append((time.monotonic(), a, r)),
                        lambda j, f, r: deferred.append((f, r)), tls=tls)
        start = time.monotonic()
        for i in range(jobs):
            router.route(_job(i))
        while len(routed) + len(deferred) < jobs:
            await asyncio.sleep(0.01)
        await asyncio.sleep(after)
        router.route(_job(jobs))  # after the look, or after waiting for it: routed at once
        while len(routed) + len(deferred) < jobs + 1:
            await asyncio.sleep(0.01)
        return start

    start = asyncio.run(scenario())
    return start, routed, deferred


def test_mail_waits_once_for_a_slow_look_then_goes_without_a_policy():
    fetcher = SlowFetcher(5.0, Policy("enforce", ("mx.example.com",), 86400))
    start, routed, _ = _run(fetcher, wait=0.3, jobs=50)
    assert fetcher.looks == 1  # one look for all of them
    first = routed[:50]
    assert all(0.25 < t - start < 2.0 for t, _, _ in first)  # waited `wait`, not the look's 5 s
    assert {r.policy.tls for _, _, r in first} == {"opportunistic"}
    later = routed[50]  # while the look still goes on: no second wait
    assert later[0] - first[-1][0] < 0.2 and later[2].policy.tls == "opportunistic"


def test_once_looked_at_the_policy_is_in_force_at_once():
    fetcher = SlowFetcher(0.05, Policy("enforce", ("mx.example.com",), 86400))
    start, routed, _ = _run(fetcher, wait=5.0, jobs=10, after=0.1)
    assert {r.policy.tls for _, _, r in routed} == {"mta-sts-enforce"}
    assert all(t - start < 1.0 for t, _, _ in routed)


def test_an_enforced_policy_without_a_matching_mx_defers_in_the_tls_phase():
    fetcher = SlowFetcher(0.0, Policy("enforce", ("*.elsewhere.test",), 86400))
    _, routed, deferred = _run(fetcher, wait=5.0, jobs=3, after=0.05)
    assert not routed[:3] and len(deferred) >= 3
    failure, resolved = deferred[0]
    assert failure.phase == "tls" and not failure.permanent and resolved.policy.tls == "mta-sts-enforce"
