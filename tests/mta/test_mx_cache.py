"""The MX cache (mta.routing.mx): answers kept for their TTL between the floor and the ceiling,
failures briefly, and a bounded size whatever the stream of new domains. A fake resolver
answers with dnspython's shapes; a fake clock moves time."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import dns.resolver

from mta.routing.mx import FAILURE_TTL, DnsFailure, MxAnswer, MxResolver


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeDns:
    """Every domain has one MX host `mx.DOMAIN` at 192.0.2.1; TTLs as set; `fail` names
    domains that get SERVFAIL. Counts the MX queries."""

    def __init__(self, ttl: int = 300) -> None:
        self.ttl = ttl
        self.fail: set[str] = set()
        self.mx_queries = 0

    async def resolve(self, name: str, kind: str, lifetime: float = 0.0):
        if kind == "MX":
            self.mx_queries += 1
            if name in self.fail:
                raise dns.resolver.NoNameservers()
            if name.startswith("gone"):
                raise dns.resolver.NXDOMAIN()
            record = SimpleNamespace(preference=10, exchange=SimpleNamespace(to_text=lambda: f"mx.{name}."))
            return _Answer([record], self.ttl)
        if kind == "A":
            return _Answer([SimpleNamespace(address="192.0.2.1")], self.ttl)
        raise dns.resolver.NoAnswer()


class _Answer(list):
    def __init__(self, records, ttl: int) -> None:
        super().__init__(records)
        self.rrset = SimpleNamespace(ttl=ttl)


def resolver(fake: FakeDns, clock: Clock, **kw) -> MxResolver:
    return MxResolver(None, 53, 5.0, 30.0, 3600.0, clock, resolver=fake, **kw)


def lookups_over(fake: FakeDns, clock: Clock, mx: MxResolver, seconds: list[float]) -> list[int]:
    """MX queries made after each of ``seconds`` (from the first lookup), one resolve each."""
    start = clock.now
    made = []
    for t in seconds:
        clock.now = start + t
        asyncio.run(mx.resolve("a.example"))
        made.append(fake.mx_queries)
    return made


def test_answer_is_kept_for_its_ttl() -> None:
    fake, clock = FakeDns(ttl=300), Clock()
    mx = resolver(fake, clock)
    assert lookups_over(fake, clock, mx, [0, 299, 301]) == [1, 1, 2]


def test_ttl_floor_keeps_a_zero_ttl_answer_30s() -> None:
    fake, clock = FakeDns(ttl=0), Clock()
    mx = resolver(fake, clock)
    assert lookups_over(fake, clock, mx, [0, 1, 29, 31]) == [1, 1, 1, 2]


def test_ttl_ceiling_refreshes_a_week_long_ttl_after_an_hour() -> None:
    fake, clock = FakeDns(ttl=7 * 86400), Clock()
    mx = resolver(fake, clock)
    assert lookups_over(fake, clock, mx, [0, 3599, 3601]) == [1, 1, 2]


def test_temporary_failure_is_kept_briefly() -> None:
    fake, clock = FakeDns(), Clock()
    fake.fail.add("a.example")
    mx = resolver(fake, clock)
    made = lookups_over(fake, clock, mx, [0, FAILURE_TTL - 1, FAILURE_TTL + 1])
    assert made == [1, 1, 2]
    assert isinstance(asyncio.run(mx.resolve("a.example")), DnsFailure)


def test_cache_stays_bounded_over_100000_domains() -> None:
    fake, clock = FakeDns(ttl=3600), Clock()
    mx = resolver(fake, clock, cache_limit=10_000)

    async def stream() -> int:
        peak = 0
        for i in range(100_000):
            # Mostly domains that do not exist (a typo stream; cached for the 30 s floor,
            # and a quick fake), every 20th with an answer.
            name = f"d{i}.example" if i % 20 == 0 else f"gone{i}.example"
            await mx.resolve(name)
            peak = max(peak, len(mx))
            clock.now += 0.0001  # 10 s in all: nothing expires on its own
        return peak

    peak = asyncio.run(stream())
    assert fake.mx_queries == 100_000
    assert peak <= 10_000
    assert len(mx) >= 9_000  # evicting keeps most of what fits
    assert isinstance(mx.cached("d99980.example"), MxAnswer)  # the youngest stay
    assert mx.cached("d0.example") is None


def test_a_full_cache_drops_expired_answers_first() -> None:
    fake, clock = FakeDns(ttl=60), Clock()
    mx = resolver(fake, clock, cache_limit=100)

    async def fill() -> None:
        for i in range(50):
            await mx.resolve(f"old{i}.example")
        clock.now += 30
        fake.ttl = 3600
        for i in range(50):
            await mx.resolve(f"young{i}.example")
        clock.now += 31  # the old ones expired
        await mx.resolve("new.example")

    asyncio.run(fill())
    assert len(mx) == 51
    assert all(mx.cached(f"young{i}.example") is not None for i in range(50))


def test_an_answer_names_its_site_once_the_same_as_its_hosts_say():
    from mta.routing.mx import MxAnswer, MxHost

    hosts = (MxHost("mx2.example", 20, ("192.0.2.2",)), MxHost("mx1.example", 10, ("192.0.2.1",)),
             MxHost("mx2.example", 30, ("192.0.2.3",)))
    answer = MxAnswer(hosts)
    assert answer.site == "mx1.example,mx2.example"  # sorted, each host once
    assert answer == MxAnswer(hosts) and hash(answer) == hash(MxAnswer(hosts, False))
    assert "site" not in repr(answer)
