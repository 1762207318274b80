"""Which rules apply to a recipient domain, and which destination its mail joins.

Most specific first: a `domains:` entry by exact name, then by the longest matching
`*.suffix`; then a provider whose `mx_suffix` matches one of the domain's MX hosts; then
`default:`. Each level overrides only the keys it sets.

Destination keys: a domain with its own entry gets its own (`domain:NAME`), since its
limits are its own; a provider's mail shares one destination (`provider:NAME`) whatever
the domain; every other domain joins the destination of its MX host set (`mx:HOSTS`), so
domains hosted together share connections and limits.

A provider's limits bound all of its domains together: a domain entry under a provider
can lower its rates and connection limit, never raise them above the provider's, and its
destination stays in the provider's group (`Resolved.group`), whose sessions together
stay within the provider's `connection_limit` (mta.destinations.share).

The operators' response patterns are compiled here too (`Rules.patterns`), once per
rules file.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from mta.config import Config, Domain, Policy, Provider, Route, merge
from mta.routing.mx import MxAnswer
from shaper.patterns import Patterns


# Limits a domain entry may lower but not raise above its provider's.
CAPPED_BY_PROVIDER = ("connection_limit", "max_message_rate", "max_connection_rate")


@dataclass(frozen=True, slots=True)
class Resolved:
    key: str
    policy: Policy
    why: tuple[str, ...]
    group: str | None = None  # the provider destination whose limits also bound this one
    group_policy: Policy | None = None  # that provider's limits (default < provider)


def capped(policy: Policy, ceiling: Policy) -> Policy:
    """``policy`` with its limits no higher than ``ceiling``'s."""
    changes = {}
    for field in CAPPED_BY_PROVIDER:
        own, top = getattr(policy, field), getattr(ceiling, field)
        if own is not None and top is not None and _above(own, top):
            changes[field] = top
    return msgspec.structs.replace(policy, **changes) if changes else policy


def _above(value, ceiling) -> bool:
    if isinstance(value, int):
        return value > ceiling
    return value.per_second > ceiling.per_second


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
        group, group_policy = None, None
        if provider is not None:
            policy = merge(policy, provider.policy)
            why.append(f"providers.{provider.name} (MX matches {', '.join(provider.mx_suffix)})")
            group, group_policy = f"provider:{provider.name}", policy
        if entry is not None:
            policy = merge(policy, entry.policy)
            why.append(f"domains.{entry.name}")
            if group_policy is not None:
                policy = capped(policy, group_policy)
        if entry is not None:
            key = f"domain:{entry.name}"
        elif provider is not None:
            key = f"provider:{provider.name}"
        else:
            key = f"mx:{site}"
        resolved = Resolved(key, policy, tuple(why), group, group_policy)
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[(domain, site)] = resolved
        return resolved

    def provider_policy(self, key: str) -> Policy | None:
        """The limits of the provider whose destination is ``key``; None if it is gone."""
        for provider in self.config.providers:
            if f"provider:{provider.name}" == key:
                return merge(self.config.default, provider.policy)
        return None

    def route(self, route: Route) -> Resolved:
        """A `routes:` entry's destination: `route:NAME`, the default policy under the
        route's own keys (no provider or domain rule: the smarthost is the destination)."""
        return Resolved(f"route:{route.name}", merge(self.config.default, route.policy),
                        ("default", f"routes.{route.name} (sender domain {route.sender_domain})"))
