"""The TLS policies of recipient domains for the router: what is in force for a domain now
(`decide`, never waiting), and the short wait for a domain's first look (`settled`).

Mail of a domain whose policies were never looked at waits for that look at most
`mta_sts.wait` seconds (the router holds it in a list per domain, no task per message),
then goes as if the domain published none, and so does its later mail while that look
goes on: a slow or broken policy server never stalls mail that has no known policy.
Made by `make_policies` from the rules file's sections.
"""

from __future__ import annotations

import asyncio
import socket

import dns.asyncresolver

from mta.clock import Clock
from mta.config import Config
from mta.routing.mx import DnsFailure, MxAnswer
from mta.routing.rules import Resolved
from mta.tls.apply import HONOURING, concrete
from mta.tls.cache import PENDING, StsPolicies, state_path
from mta.tls.fetch import Fetcher
from mta.tls.files import ReportFiles
from mta.tls.tlsa import DaneStates, secure_resolver
from mta.tls.report import result_type, sts_policy, tlsa_policy
from mta.smtp.client import Reply


def outcome_of(reply: Reply) -> str:
    """`success` (TLS as the policy wants), `failure` (TLS refused, or a testing policy
    not met), `plaintext`, or `no-session` (it failed before TLS could be tried)."""
    if reply.tls_failure is not None or reply.phase == "tls":
        return "failure"
    if reply.tls is not None:
        return "success"
    if reply.phase in ("dns", "connect") or (reply.code is None and reply.phase == "ehlo"):
        return "no-session"
    return "plaintext"


class TlsPolicies:
    def __init__(self, sts: StsPolicies, wait: float, reports: ReportFiles | None = None, dane: DaneStates | None = None):
        self.sts = sts
        self.dane = dane  # None: the resolver is not trusted to validate (dns.dnssec), no DANE
        self.wait = wait
        self.reports = reports
        self.counts: dict[tuple[str, str], int] = {}  # (TLS policy, outcome) -> attempts: mta_tls_policy_total
        self._decided: dict[str, tuple] = {}  # domain -> (what it was decided from, the decision)
        self._waited: set[str] = set()  # domains whose first look outlasted `wait`: their mail waits no more

    def attempted(self, domain: str, mode: str, reply: Reply, mx: str | None, ip: str | None) -> None:
        """An attempt under ``mode`` ended with ``reply``: counted, and reported when a
        published policy held it."""
        outcome = outcome_of(reply)
        known = self.sts.known(domain) if mode.startswith("mta-sts-") else None
        failure = None if outcome != "failure" else reply.tls_failure or result_type(reply.text)
        if outcome == "success" and known is not None and mx is not None and not known.policy.allows(mx):
            outcome, failure = "failure", "validation-failure"  # testing: an MX host it does not name (§4.1)
        key = (mode, outcome)
        self.counts[key] = self.counts.get(key, 0) + 1
        if self.reports is None or outcome == "no-session":
            return
        unfetched = self.sts.unfetched.get(domain) if mode == "opportunistic" else None
        if unfetched is not None:
            # It publishes a policy that could not be had: each session is a failure of it (§4.3).
            policy = {"policy-type": "sts", "policy-string": [], "policy-domain": domain}
            self.reports.count(domain, policy, unfetched, mx, ip)
        elif outcome == "plaintext":
            return
        elif known is not None:
            self.reports.count(domain, sts_policy(domain, known.policy), failure, mx, ip)
        elif mode == "dane" and mx is not None and self.dane is not None:
            state = self.dane.known(domain).get(mx)
            if state is not None:
                records = [str(r) for r in state.records] or [state.failure or ""]
                self.reports.count(domain, tlsa_policy(domain, mx, records), failure, mx, ip)

    def decide(self, resolved: Resolved, answer: MxAnswer, domain: str,
               waited: bool) -> tuple[Resolved, MxAnswer] | DnsFailure | None:
        """The destination and hosts for ``domain``'s mail, the failure that defers it, or
        None: its first look is under way and it has not ``waited`` for it yet."""
        if resolved.policy.tls not in HONOURING:
            return resolved, answer
        sts = self.sts.policy(domain)
        dane = self.dane.hosts(domain) if self.dane is not None and resolved.policy.tls == "dane" else None
        if sts is PENDING or dane is PENDING:
            if not waited and domain not in self._waited:
                return None
            sts = None if sts is PENDING else sts
            dane = None if dane is PENDING else dane
        # Every message asks: the same rules, answer and policies (the same objects, cached
        # where they come from) get the decision made for the first without a new one.
        made = self._decided.get(domain)
        if made is not None and made[0] is resolved and made[1] is answer and made[2] is sts and made[3] is dane:
            return made[4]
        if len(self._decided) > 10_000:
            self._decided.clear()
        decided = concrete(resolved, answer, domain, sts, dane)
        self._decided[domain] = (resolved, answer, sts, dane, decided)
        return decided

    async def settled(self, domain: str) -> None:
        """The first looks at ``domain``'s policies, for at most `wait` seconds."""
        if self.dane is None:
            await self.sts.settled(domain, self.wait)
        else:
            await asyncio.gather(self.sts.settled(domain, self.wait), self.dane.settled(domain, self.wait))
        if len(self._waited) > 10_000:
            self._waited.clear()
        self._waited.add(domain)  # (a look that ended: its domain never answers PENDING again)


def resolver_of(config: Config) -> dns.asyncresolver.Resolver:
    """A resolver asking the rules' nameservers, as the MX lookups do."""
    if config.dns.nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = list(config.dns.nameservers)
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.port = config.dns.port
    return resolver


def make_policies(config: Config, clock: Clock, config_path: str | None) -> TlsPolicies:
    """Policies and reports keep the wall time (they outlive the process)."""
    wall = clock.wall
    settings = config.mta_sts
    fetcher = Fetcher(resolver_of(config), timeout=settings.timeout, port=settings.port, ca_file=settings.ca_file)
    sts = StsPolicies(fetcher, wall, state_path(config_path), min_ttl=config.dns.min_ttl, max_ttl=config.dns.max_ttl)
    reports = None
    if settings.reports and config_path is not None:
        reports = ReportFiles(config_path + ".tlsrpt", config.smtp.helo or socket.getfqdn(), clock,
                              config.cluster.node, config.smtp.bind)
    dane = None
    if config.dns.dnssec:
        dane = DaneStates(secure_resolver(resolver_of(config)), clock.now, timeout=config.dns.timeout,
                          min_ttl=config.dns.min_ttl, max_ttl=config.dns.max_ttl)
    return TlsPolicies(sts, settings.wait, reports, dane)
