"""`mta check CONFIG --explain DOMAIN`: which destination a domain's mail joins, which
limits apply to it and which level of the rules set each one.

The MX lookup uses the rules file's own DNS settings (providers match by MX host);
`--mx HOST` skips it, for a domain whose MX is known or not yet published.
"""

from __future__ import annotations

import asyncio
import time

from mta.config import Config, Policy
from mta.mx import DnsFailure, MxAnswer, MxHost, MxResolver
from mta.rules import Rules
from shaper.units import Duration


def _show(field: str, value) -> str:
    if value is None:
        return "-"
    if field == "retry_intervals":
        return "[" + ", ".join(str(Duration(v)) for v in value) + "]"
    if isinstance(value, float) and (field.endswith("timeout") or field == "max_age"):
        return str(Duration(value))
    return str(value)


def _levels(config: Config, rules: Rules, domain: str, answer: MxAnswer | None) -> list[tuple[str, Policy]]:
    """The levels that apply, least specific first, each with what it sets."""
    levels: list[tuple[str, Policy]] = [("default", config.default)]
    provider = rules.provider_of(answer)
    if provider is not None:
        levels.append((f"providers.{provider.name}", provider.policy))
    entry = rules.domain_entry(domain)
    if entry is not None:
        levels.append((f"domains.{entry.name}", entry.policy))
    return levels


async def _lookup(config: Config, domain: str) -> MxAnswer | DnsFailure:
    dns = config.dns
    resolver = MxResolver(dns.nameservers, dns.port, dns.timeout, dns.min_ttl, dns.max_ttl, time.time)
    rules = Rules(config)
    entry = rules.domain_entry(domain)
    if entry is not None and entry.mx:
        return await resolver.resolve_static(entry.mx)
    return await resolver.resolve(domain)


def explain(config: Config, domain: str, mx: str | None = None) -> str:
    domain = domain.lower().rstrip(".")
    rules = Rules(config)
    lines = [f"domain {domain}"]
    if mx is not None:
        answer: MxAnswer | DnsFailure = MxAnswer((MxHost(mx.lower().rstrip("."), 10, ()),))
        lines.append(f"  MX (given): {mx}")
    else:
        try:
            answer = asyncio.run(_lookup(config, domain))
        except Exception as exc:  # the explanation still helps without DNS
            answer = DnsFailure(False, "4.4.3", f"lookup failed: {exc.__class__.__name__}")
        if isinstance(answer, DnsFailure):
            lines.append(f"  MX lookup: {answer.description} ({answer.enhanced}); providers cannot match")
        else:
            hosts = ", ".join(f"{h.name} ({h.preference})" for h in answer.hosts)
            lines.append(f"  MX: {hosts}")
    mx_answer = answer if isinstance(answer, MxAnswer) else None
    resolved = rules.resolve(domain, mx_answer)
    lines.append(f"  destination: {resolved.key}")
    lines.append(f"  rules applied: {' < '.join(resolved.why)}")
    levels = _levels(config, rules, domain, mx_answer)
    lines.append("  limits:")
    width = max(len(f) for f in Policy.__struct_fields__)
    for field in Policy.__struct_fields__:
        source = "default"
        for name, policy in levels:
            if getattr(policy, field) is not None:
                source = name
        value = _show(field, getattr(resolved.policy, field))
        lines.append(f"    {field:<{width}}  {value:<{max(16, len(value))}}  from {source}")
    if config.patterns:
        lines.append(f"  response patterns: {len(config.patterns)} (applied to whichever destination answers)")
    return "\n".join(lines)
