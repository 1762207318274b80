"""Which rules apply to a recipient domain, and which destination its mail joins.

Most specific first: a `domains:` entry by exact name, then by the longest matching
`*.suffix`; then a provider whose `mx_suffix` matches one of the domain's MX hosts; then
`default:`. Each level overrides only the keys it sets.

Destination keys: a domain with its own entry gets its own (`domain:NAME`), since its
limits are its own; a provider's mail shares one destination (`provider:NAME`) whatever
the domain; every other domain joins the destination of its MX host set (`mx:HOSTS`), so
domains hosted together share connections and limits.

The operators' response patterns are compiled here too (`Rules.patterns`), once per
rules file.
"""

from __future__ import annotations

from dataclasses import dataclass

from mta.config import Config, Domain, Policy, Provider, Route, merge
from mta.mx import MxAnswer
from shaper.patterns import Patterns


@dataclass(frozen=True, slots=True)
class Resolved:
    key: str
    policy: Policy
    why: tuple[str, ...]


class Rules:
    def __init__(self, config: Config):
        self.config = config
        self._domains = {d.name: d for d in config.domains if not d.name.startswith("*.")}
        self._wildcards = sorted((d for d in config.domains if d.name.startswith("*.")),
                                 key=lambda d: -len(d.name))
        self._cache: dict[tuple[str, str], Resolved] = {}
        self.patterns = Patterns([
            Patterns.compile(i, p.action, p.match, code=p.code, enhanced=p.enhanced, duration=p.duration,
                             payload=p.policy)
            for i, p in enumerate(config.patterns)
        ])

    def domain_entry(self, domain: str) -> Domain | None:
        entry = self._domains.get(domain)
        if entry is not None:
            return entry
        for wildcard in self._wildcards:
            suffix = wildcard.name[1:]  # ".example.com"
            if domain.endswith(suffix):
                return wildcard
        return None

    def provider_of(self, answer: MxAnswer | None) -> Provider | None:
        if answer is None:
            return None
        for provider in self.config.providers:
            for host in answer.hosts:
                name = host.name.lower()
                if any(name.endswith(s) or name == s.lstrip(".") for s in provider.mx_suffix):
                    return provider
        return None

    def resolve(self, domain: str, answer: MxAnswer | None) -> Resolved:
        site = answer.site if answer is not None else ""
        cached = self._cache.get((domain, site))
        if cached is not None:
            return cached
        policy = self.config.default
        why = ["default"]
        provider = self.provider_of(answer)
        entry = self.domain_entry(domain)
        if provider is not None:
            policy = merge(policy, provider.policy)
            why.append(f"providers.{provider.name} (MX matches {', '.join(provider.mx_suffix)})")
        if entry is not None:
            policy = merge(policy, entry.policy)
            why.append(f"domains.{entry.name}")
        if entry is not None:
            key = f"domain:{entry.name}"
        elif provider is not None:
            key = f"provider:{provider.name}"
        else:
            key = f"mx:{site}"
        resolved = Resolved(key, policy, tuple(why))
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[(domain, site)] = resolved
        return resolved

    def route(self, route: Route) -> Resolved:
        """A `routes:` entry's destination: `route:NAME`, the default policy under the
        route's own keys (no provider or domain rule: the smarthost is the destination)."""
        return Resolved(f"route:{route.name}", merge(self.config.default, route.policy),
                        ("default", f"routes.{route.name} (sender domain {route.sender_domain})"))
