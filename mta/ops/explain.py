"""`mta check CONFIG --explain DOMAIN`: which destination a domain's mail joins, which
limits apply to it and which level of the rules set each one.

The MX lookup uses the rules file's own DNS settings (providers match by MX host);
`--mx HOST` skips it, for a domain whose MX is known or not yet published. The TLS in
force is shown too: the rules' `tls` mode and the MTA-STS policy and DANE records the
domain publishes (mta.tls.explain; not looked up with `--mx`). When DOMAIN is
also a sender domain with `routes:` entries (or DOMAIN is `route:NAME`), each route that
its mail may leave by is shown too: the smarthost, the route's destination and its limits.
"""

from __future__ import annotations

import asyncio

from mta.clock import SYSTEM
from mta.config import Config, Policy, Route
from mta.routing.mx import DnsFailure, MxAnswer, MxHost, MxResolver
from mta.routing.rules import CAPPED_BY_PROVIDER, Resolved, Rules
from mta.tls.explain import tls_lines
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
    resolver = MxResolver(dns.nameservers, dns.port, dns.timeout, dns.min_ttl, dns.max_ttl, SYSTEM.wall)
    rules = Rules(config)
    entry = rules.domain_entry(domain)
    if entry is not None and entry.mx:
        return await resolver.resolve_static(entry.mx)
    return await resolver.resolve(domain)


def _limits(resolved: Resolved, levels: list[tuple[str, Policy]]) -> list[str]:
    """One line per limit: the value in force and the level it comes from."""
    lines = ["  limits:"]
    width = max(len(f) for f in Policy.__struct_fields__)
    group = resolved.group_policy if resolved.group != resolved.key else None
    for field in Policy.__struct_fields__:
        source = "default"
        for name, policy in levels:
            if getattr(policy, field) is not None:
                source = name
        value = getattr(resolved.policy, field)
        if group is not None and field in CAPPED_BY_PROVIDER and source.startswith("domains.") \
                and value == getattr(group, field) and value != getattr(levels[-1][1], field):
            source = f"{resolved.group} (a ceiling: {source} asks {_show(field, getattr(levels[-1][1], field))})"
        shown = _show(field, value)
        lines.append(f"    {field:<{width}}  {shown:<{max(16, len(shown))}}  from {source}")
    return lines


def _routes_of(config: Config, name: str) -> list[tuple[int, Route]]:
    """The routes a sender domain's mail may leave by (file order; which one a message
    takes depends on its tags), or the route called `route:NAME`."""
    if name.startswith("route:"):
        return [(i, r) for i, r in enumerate(config.routes) if f"route:{r.name}" == name]
    found = []
    for i, route in enumerate(config.routes):
        pattern = route.sender_domain
        if name == pattern or (pattern.startswith("*.") and name.endswith(pattern[1:])):
            found.append((i, route))
    return found


def _explain_route(config: Config, rules: Rules, index: int, route: Route) -> list[str]:
    resolved = rules.route(route)
    match = "From: header" if route.sender_match == "from" else "envelope sender"
    tags = ", ".join(route.tags) if route.tags else "any"
    lines = [f"route routes[{index}] {route.name}: mail whose {match} domain is {route.sender_domain} "
             f"(tags: {tags}) leaves by the smarthost, not by the recipient's MX"]
    auth = f"; AUTH as {route.username}" if route.username else ""
    lines.append(f"  smarthost: {route.smarthost}{auth}")
    lines.append(f"  destination: {resolved.key}")
    lines.append(f"  rules applied: {' < '.join(resolved.why)}")
    lines += _limits(resolved, [("default", config.default), (f"routes.{route.name}", route.policy)])
    return lines


def _tls(config: Config, domain: str, mode: str, answer: MxAnswer | None, static: bool) -> list[str]:
    try:
        return asyncio.run(tls_lines(config, domain, mode, answer, static))
    except Exception as exc:  # the explanation still helps without it
        return [f"  TLS: tls: {mode}; its published policies could not be looked up ({exc.__class__.__name__})"]


def explain(config: Config, domain: str, mx: str | None = None) -> str:
    domain = domain.lower().rstrip(".")
    rules = Rules(config)
    routes = _routes_of(config, domain)
    if domain.startswith("route:"):
        if not routes:
            return f"{domain}: no such route (routes are named by `name:`, default their sender_domain)"
        return "\n".join(_explain_route(config, rules, *routes[0]))
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
    if resolved.group is not None and resolved.group != resolved.key:
        group = resolved.group_policy
        lines.append(f"  within {resolved.group}: its connection_limit {group.connection_limit} and "
                     f"max_message_rate {group.max_message_rate} bound all its destinations together")
    lines += _limits(resolved, _levels(config, rules, domain, mx_answer))
    entry = rules.domain_entry(domain)
    lines += _tls(config, domain, resolved.policy.tls, mx_answer if mx is None else None,
                  entry is not None and bool(entry.mx))
    if config.patterns:
        lines.append(f"  response patterns: {len(config.patterns)} (applied to whichever destination answers)")
    for index, route in routes:
        lines.append("")
        lines += _explain_route(config, rules, index, route)
    return "\n".join(lines)
