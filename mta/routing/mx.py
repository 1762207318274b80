"""MX resolution: which hosts take mail for a domain, in what order, until when.

RFC 5321 §5.1: MX records by preference (ties in random order); no MX record means the
domain itself is the mail host (implicit MX); a single MX of "." is a null MX (RFC 7505):
the domain takes no mail. NXDOMAIN and null MX are permanent; SERVFAIL and timeouts are
temporary. Answers are cached for their TTL, kept between a floor (so a 0-TTL zone cannot
turn every message into a lookup) and a ceiling; failures are cached briefly. The cache
holds at most `CACHE_LIMIT` domains: when full, expired answers go first, then the oldest
(a stream of one-off domains must not grow it without end).

dnspython's exceptions stop here: callers get `MxAnswer` or `DnsFailure` values.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

# A failure is remembered this long: long enough to spare the DNS server a storm of
# lookups from every queued message, short enough to notice a fixed zone soon.
FAILURE_TTL = 10.0
# DNS queries in flight at once, each a socket: thousands of new domains arriving together
# must not take the descriptors the SMTP connection budget counts on (mta.destinations.budget).
MAX_QUERIES = 64
# Domains whose answer is cached: a day of mail to 10,000 domains fits many times over, and
# at about 1 KB an answer it stays within tens of MB whatever the stream of new domains.
CACHE_LIMIT = 50_000


@dataclass(frozen=True, slots=True)
class MxHost:
    name: str  # the MX host name, or the address for static routes
    preference: int
    addresses: tuple[str, ...]
    port: int | None = None  # None: the configured smtp.port
    tlsa: object = None  # DANE: the host's secure TLSA state (mta.tls.dane.HostTlsa), set by mta.tls.apply


@dataclass(frozen=True, slots=True)
class MxAnswer:
    hosts: tuple[MxHost, ...]  # in the order to try them; every host has an address
    implicit: bool = False
    # Names the set of hosts: domains that share it share one destination. Read for every
    # message routed (rules.resolve), so named once, with the answer.
    site: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "site", ",".join(sorted({h.name for h in self.hosts})))


@dataclass(frozen=True, slots=True)
class DnsFailure:
    permanent: bool
    enhanced: str
    description: str
    phase: str = "dns"  # "tls": an MTA-STS policy that none of the MX hosts matches


def parse_static(entry: str) -> tuple[str, int | None, bool]:
    """`[addr]:port` (no lookup), `host:port` or `host` -> (host, port, literal)."""
    literal = entry.startswith("[")
    if literal:
        host, _, rest = entry[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else None
        return host, port, True
    host, _, port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
    return host, (int(port) if port else None), False


class MxResolver:
    def __init__(self, nameservers: tuple[str, ...] | None, port: int, timeout: float,
                 min_ttl: float, max_ttl: float, clock: Callable[[], float], *, resolver=None,
                 cache_limit: int = CACHE_LIMIT):
        if resolver is not None:  # tests: anything with dnspython's `resolve(name, kind, lifetime=)`
            self._resolver = resolver
        elif nameservers:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = list(nameservers)
        else:
            self._resolver = dns.asyncresolver.Resolver()
        self._resolver.port = port
        self._timeout = timeout
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, MxAnswer | DnsFailure]] = {}
        self._cache_limit = cache_limit
        self.lookups = 0
        self.cache_hits = 0
        self._queries = asyncio.Semaphore(MAX_QUERIES)

    def cached(self, domain: str) -> MxAnswer | DnsFailure | None:
        entry = self._cache.get(domain)
        if entry is not None and entry[0] > self._clock():
            self.cache_hits += 1
            return entry[1]
        return None

    async def resolve(self, domain: str) -> MxAnswer | DnsFailure:
        hit = self.cached(domain)
        if hit is not None:
            return hit
        self.lookups += 1
        answer, ttl = await self._lookup(domain)
        if isinstance(answer, DnsFailure) and not answer.permanent:
            ttl = FAILURE_TTL
        else:
            ttl = min(max(ttl, self._min_ttl), self._max_ttl)
        cache = self._cache
        cache.pop(domain, None)  # a fresh answer moves to the young end
        if len(cache) >= self._cache_limit:
            self._evict()
        cache[domain] = (self._clock() + ttl, answer)
        return answer

    def _evict(self) -> None:
        """Make room in a full cache: drop what expired; if that is less than a tenth,
        drop the oldest entries (insertion order) too, so the next thousands of new domains
        find room without another sweep each."""
        now = self._clock()
        cache = self._cache
        for domain in [d for d, (expires, _) in cache.items() if expires <= now]:
            del cache[domain]
        excess = len(cache) - (self._cache_limit - max(1, self._cache_limit // 10))
        if excess > 0:
            for domain in list(itertools.islice(cache, excess)):
                del cache[domain]

    def __len__(self) -> int:
        """Domains in the cache."""
        return len(self._cache)

    async def resolve_static(self, entries: tuple[str, ...]) -> MxAnswer | DnsFailure:
        """A configured `mx:` list: literals need no lookup, names get their A/AAAA records."""
        hosts = []
        for preference, entry in enumerate(entries):
            host, port, literal = parse_static(entry)
            if literal:
                hosts.append(MxHost(host, preference, (host,), port))
                continue
            addresses, _, failure = await self._addresses(host)
            if addresses:
                hosts.append(MxHost(host, preference, addresses, port))
            elif failure is not None and len(entries) == 1:
                return failure
        if not hosts:
            return DnsFailure(False, "4.4.3", f"no address for any of {', '.join(entries)}")
        return MxAnswer(tuple(hosts))

    async def _lookup(self, domain: str) -> tuple[MxAnswer | DnsFailure, float]:
        try:
            async with self._queries:
                answer = await self._resolver.resolve(domain, "MX", lifetime=self._timeout)
        except dns.resolver.NXDOMAIN:
            return DnsFailure(True, "5.1.2", f"domain {domain} does not exist (NXDOMAIN)"), 0.0
        except dns.resolver.NoAnswer:
            return await self._implicit(domain)
        except dns.exception.Timeout:
            return DnsFailure(False, "4.4.3", f"DNS timeout looking up MX of {domain}"), 0.0
        except (dns.resolver.NoNameservers, dns.exception.DNSException) as exc:
            return DnsFailure(False, "4.4.3", f"DNS failure looking up MX of {domain}: {exc.__class__.__name__}"), 0.0
        records = sorted(answer, key=lambda r: (r.preference, random.random()))
        if len(records) == 1 and records[0].exchange.to_text() == ".":
            return DnsFailure(True, "5.1.10", f"{domain} publishes a null MX: it accepts no mail"), 0.0
        ttl = float(answer.rrset.ttl)
        names = [r.exchange.to_text().rstrip(".").lower() for r in records if r.exchange.to_text() != "."]
        found = await asyncio.gather(*(self._addresses(name) for name in names))
        hosts = []
        for record, name, (addresses, addr_ttl, _) in zip(records, names, found):
            if addresses:
                hosts.append(MxHost(name, record.preference, addresses))
                ttl = min(ttl, addr_ttl)
        if not hosts:
            return DnsFailure(False, "4.4.3", f"no address for any MX host of {domain} ({', '.join(names)})"), 0.0
        return MxAnswer(tuple(hosts)), ttl

    async def _implicit(self, domain: str) -> tuple[MxAnswer | DnsFailure, float]:
        addresses, ttl, failure = await self._addresses(domain)
        if addresses:
            return MxAnswer((MxHost(domain, 0, addresses),), implicit=True), ttl
        if failure is not None and failure.permanent:
            return failure, 0.0
        if failure is None:
            return DnsFailure(True, "5.1.2", f"{domain} has no MX and no address record"), 0.0
        return failure, 0.0

    async def _addresses(self, name: str) -> tuple[tuple[str, ...], float, DnsFailure | None]:
        """A and AAAA of one host (IPv4 first); empty with the reason when there is none."""
        results = await asyncio.gather(
            self._records(name, "A"), self._records(name, "AAAA"))
        addresses: list[str] = []
        ttl = self._max_ttl
        failure = None
        for found, found_ttl, found_failure in results:
            addresses.extend(found)
            if found:
                ttl = min(ttl, found_ttl)
            failure = failure or found_failure
        return tuple(addresses), ttl, (None if addresses else failure)

    async def _records(self, name: str, kind: str) -> tuple[list[str], float, DnsFailure | None]:
        try:
            async with self._queries:
                answer = await self._resolver.resolve(name, kind, lifetime=self._timeout)
        except dns.resolver.NXDOMAIN:
            return [], 0.0, DnsFailure(True, "5.1.2", f"host {name} does not exist (NXDOMAIN)")
        except dns.resolver.NoAnswer:
            return [], 0.0, None
        except dns.exception.DNSException as exc:
            return [], 0.0, DnsFailure(False, "4.4.3", f"DNS failure looking up {kind} of {name}: {exc.__class__.__name__}")
        return [r.address for r in answer], float(answer.rrset.ttl), None
