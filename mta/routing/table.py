"""Routing: from a job's sender (customer smarthost routes) or recipient domain to the
destination that will carry it.

A cached answer routes the job at once (the common case: no await, no task). A domain
without a fresh answer gets one lookup task, however many jobs wait for it; they wait in a
list for that domain and are all routed when the answer comes. Mail of a sender with a
route (mta.routing.routes) skips the recipient's MX: it waits, the same way, for its smarthost's
addresses, and joins the route's destination.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from mta.clock import SYSTEM
from mta.intake.message import Job
from mta.routing.mx import FAILURE_TTL, DnsFailure, MxAnswer, MxResolver
from mta.routing.routes import SMARTHOST_TTL, RouteEntry, RouteTable, resolve_smarthost
from mta.routing.rules import Resolved, Rules
from mta.tls.apply import HONOURING, with_tls

log = logging.getLogger("mta.routing")


class Router:
    def __init__(self, resolver: MxResolver, rules: Rules,
                 deliver: Callable[[Job, MxAnswer, Resolved], None],
                 unroutable: Callable[[Job, DnsFailure, Resolved], None], *,
                 routes: RouteTable | None = None, clock: Callable[[], float] = SYSTEM.now, tls=None):
        self._resolver = resolver
        self.routes = routes
        self._clock = clock
        self._smarthosts: dict[str, tuple[float, MxAnswer | DnsFailure]] = {}
        self.rules = rules
        self._deliver = deliver
        self._unroutable = unroutable
        self._waiting: dict[str, list[Job]] = {}
        self._static: dict[str, MxAnswer | DnsFailure] = {}  # by `domains:` entry (one per rule, not per domain)
        self._tasks: set[asyncio.Task] = set()
        self.tls = tls  # recipient domains' TLS policies (mta.tls.service); None: the rules' tls modes as they are

    def route(self, job: Job) -> None:
        if self.routes:
            entry = self.routes.match(job)
            if entry is not None:
                self._via_smarthost(job, entry)
                return
        domain = job.domain
        answer = self._cached(domain)
        if answer is not None:
            self._dispatch(job, domain, answer)
            return
        waiting = self._waiting.get(domain)
        if waiting is not None:
            waiting.append(job)
            return
        self._waiting[domain] = [job]
        task = asyncio.get_running_loop().create_task(self._lookup(domain), name=f"mx {domain}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def drain(self) -> list[Job]:
        """Jobs still waiting for DNS (shutdown or lost broker)."""
        jobs = [job for waiting in self._waiting.values() for job in waiting]
        for waiting in self._waiting.values():
            waiting.clear()
        return jobs

    def reload(self, rules: Rules) -> None:
        self.rules = rules
        self._static.clear()
        self._smarthosts.clear()

    def _via_smarthost(self, job: Job, entry: RouteEntry) -> None:
        key = entry.key  # "route:NAME": never a domain name, so it shares `_waiting` safely
        cached = self._smarthosts.get(key)
        if cached is not None and cached[0] > self._clock():
            self._dispatch_route(job, entry, cached[1])
            return
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.append(job)
            return
        self._waiting[key] = [job]
        task = asyncio.get_running_loop().create_task(self._lookup_smarthost(entry), name=f"smarthost {key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _lookup_smarthost(self, entry: RouteEntry) -> None:
        try:
            answer = await resolve_smarthost(self._resolver, entry)
        except Exception as exc:  # a resolver bug must not strand the waiting jobs
            log.exception("lookup of smarthost %s failed unexpectedly; its mail is deferred", entry.smarthost)
            answer = DnsFailure(False, "4.4.3", f"smarthost lookup failed: {exc.__class__.__name__}")
        ttl = SMARTHOST_TTL if isinstance(answer, MxAnswer) else FAILURE_TTL
        self._smarthosts[entry.key] = (self._clock() + ttl, answer)
        for job in self._waiting.pop(entry.key, []):
            self._dispatch_route(job, entry, answer)

    def _dispatch_route(self, job: Job, entry: RouteEntry, answer: MxAnswer | DnsFailure) -> None:
        if isinstance(answer, DnsFailure):
            self._unroutable(job, answer, entry.resolved)
        else:
            self._deliver(job, answer, entry.resolved)

    def _cached(self, domain: str) -> MxAnswer | DnsFailure | None:
        entry = self.rules.domain_entry(domain)
        if entry is not None and entry.mx:
            return self._static.get(entry.name)
        return self._resolver.cached(domain)

    async def _lookup(self, domain: str) -> None:
        try:
            entry = self.rules.domain_entry(domain)
            if entry is not None and entry.mx:
                answer = await self._resolver.resolve_static(entry.mx)
                if isinstance(answer, MxAnswer):
                    self._static[entry.name] = answer  # a `*.suffix` rule: every subdomain shares it
            else:
                answer = await self._resolver.resolve(domain)
        except Exception as exc:  # a resolver bug must not strand the waiting jobs
            log.exception("MX lookup of %s failed unexpectedly; its mail is deferred", domain)
            answer = DnsFailure(False, "4.4.3", f"MX lookup failed: {exc.__class__.__name__}")
        for job in self._waiting.pop(domain, []):
            self._dispatch(job, domain, answer)

    def _dispatch(self, job: Job, domain: str, answer: MxAnswer | DnsFailure, waited: bool = False) -> None:
        if isinstance(answer, DnsFailure):
            self._unroutable(job, answer, self.rules.resolve(domain, None))
            return
        resolved = self.rules.resolve(domain, answer)
        if self.tls is not None and resolved.policy.tls in HONOURING and not self._static_mx(domain):
            decided = self.tls.decide(resolved, answer, domain, waited)
            if decided is None:  # the first look at its policies is under way: wait for it, briefly
                self._wait_for_policy(job, domain, answer)
                return
            if isinstance(decided, DnsFailure):  # an enforced MTA-STS policy none of the MX hosts matches
                self._unroutable(job, decided, with_tls(resolved, "mta-sts-enforce"))
                return
            resolved, answer = decided
        self._deliver(job, answer, resolved)

    def resolved(self, domain: str, answer: MxAnswer) -> Resolved:
        """The destination of ``domain``'s mail now, its TLS policies applied (a reload
        finds a live destination's rules by it)."""
        resolved = self.rules.resolve(domain, answer)
        if self.tls is None or resolved.policy.tls not in HONOURING or self._static_mx(domain):
            return resolved
        decided = self.tls.decide(resolved, answer, domain, True)
        return resolved if isinstance(decided, DnsFailure) else decided[0]

    def _static_mx(self, domain: str) -> bool:
        """A domain the rules route to given hosts: published MX policies do not name those."""
        entry = self.rules.domain_entry(domain)
        return entry is not None and bool(entry.mx)

    def _wait_for_policy(self, job: Job, domain: str, answer: MxAnswer) -> None:
        key = f"tls:{domain}"  # never a domain name: it shares `_waiting` safely
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.append(job)
            return
        self._waiting[key] = [job]
        task = asyncio.get_running_loop().create_task(self._policy_settled(key, domain, answer), name=f"tls {domain}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _policy_settled(self, key: str, domain: str, answer: MxAnswer) -> None:
        try:
            await self.tls.settled(domain)
        finally:  # settled or not (or cancelled): the mail goes on, as if without a policy if need be
            for job in self._waiting.pop(key, []):
                self._dispatch(job, domain, answer, waited=True)
