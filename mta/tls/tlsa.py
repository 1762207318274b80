"""DANE's lookups (RFC 7672 §2.2): whether a domain's MX answer is DNSSEC-secure, then
each MX host's `_25._tcp` TLSA records, believing the AD bit of the configured resolver
(`dns.dnssec: true` says it validates and the way to it is trusted: a validating resolver
on this host). Kept per domain like the MTA-STS policies (`mta.tls.cache`): looked up off
the message path, once per domain at a time, for the answers' TTL.

An insecure MX answer, or a host whose TLSA answer is insecure or absent, means no DANE
for it. A TLSA lookup that fails (SERVFAIL, timeout) under a secure MX answer keeps mail
from that host (§2.2: it could be an attacker hiding the records).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import dns.exception
import dns.flags
import dns.resolver

from mta.tls.cache import PENDING
from mta.tls.dane import HostTlsa, Tlsa

log = logging.getLogger("mta.tls")

MAX_LOOKUPS = 16
FAILURE_RETRY = 30.0


def secure_resolver(resolver):
    """``resolver`` asking for DNSSEC (DO, and AD in the query: RFC 6840 §5.7)."""
    resolver.use_edns(0, dns.flags.DO, 1232)
    resolver.flags = dns.flags.RD | dns.flags.AD
    return resolver


def _secure(answer) -> bool:
    return bool(answer.response.flags & dns.flags.AD)


class DaneStates:
    """``resolver``: dnspython's async resolver made by `secure_resolver`; ``clock``:
    monotonic seconds (nothing is kept across restarts)."""

    def __init__(self, resolver, clock: Callable[[], float], *, timeout: float = 5.0,
                 min_ttl: float = 30.0, max_ttl: float = 3600.0):
        self._resolver = resolver
        self._clock = clock
        self._timeout = timeout
        self._min_ttl, self._max_ttl = min_ttl, max_ttl
        self._states: dict[str, tuple[float, dict[str, HostTlsa]]] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._slots = asyncio.Semaphore(MAX_LOOKUPS)

    def hosts(self, domain: str):
        """{MX host: its secure TLSA state} for ``domain`` (empty: no DANE), or PENDING
        while its first lookup is under way."""
        entry = self._states.get(domain)
        if (entry is None or entry[0] <= self._clock()) and domain not in self._tasks:
            if len(self._states) > 100_000:
                self._states.clear()
            task = asyncio.get_running_loop().create_task(self._look(domain), name=f"dane {domain}")
            self._tasks[domain] = task
            task.add_done_callback(lambda _: self._tasks.pop(domain, None))
        return PENDING if entry is None else entry[1]

    def known(self, domain: str) -> dict[str, HostTlsa]:
        """What the last lookup found for ``domain`` (empty: nothing, or not looked up)."""
        entry = self._states.get(domain)
        return {} if entry is None else entry[1]

    async def settled(self, domain: str, timeout: float) -> None:
        task = self._tasks.get(domain)
        if task is not None:
            await asyncio.wait({task}, timeout=timeout)

    async def _look(self, domain: str) -> None:
        try:
            async with self._slots:
                hosts, ttl = await self.lookup(domain)
        except Exception:  # a bug must not stop mail: the domain goes as if without DANE
            log.exception("DANE lookup of %s failed unexpectedly", domain)
            hosts, ttl = {}, FAILURE_RETRY
        self._states[domain] = (self._clock() + min(max(ttl, self._min_ttl), self._max_ttl), hosts)

    async def lookup(self, domain: str) -> tuple[dict[str, HostTlsa], float]:
        """{MX host: its TLSA state} of ``domain`` (empty: no DANE) and the seconds it holds."""
        try:
            answer = await self._resolver.resolve(domain, "MX", lifetime=self._timeout)
        except dns.exception.DNSException:
            return {}, FAILURE_RETRY  # the MX lookup itself defers such mail
        if not _secure(answer):
            return {}, float(answer.rrset.ttl)
        names = [r.exchange.to_text().rstrip(".").lower() for r in answer if r.exchange.to_text() != "."]
        found = await asyncio.gather(*(self.host(name) for name in names))
        hosts = {name: state for name, (state, _) in zip(names, found) if state is not None}
        return hosts, min([float(answer.rrset.ttl)] + [ttl for _, ttl in found])

    async def host(self, name: str) -> tuple[HostTlsa | None, float]:
        """One MX host's TLSA state: None when it has no secure records."""
        query = f"_25._tcp.{name}"
        try:
            answer = await self._resolver.resolve(query, "TLSA", lifetime=self._timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None, self._max_ttl
        except dns.exception.DNSException as exc:
            return HostTlsa(failure=f"TLSA lookup of {query} failed ({exc.__class__.__name__})"), FAILURE_RETRY
        if not _secure(answer):
            return None, float(answer.rrset.ttl)
        records = tuple(Tlsa(r.usage, r.selector, r.mtype, bytes(r.cert)) for r in answer)
        return HostTlsa(records), float(answer.rrset.ttl)
