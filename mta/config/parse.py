"""Reading a rules file: YAML (a key given twice is an error), then every section through
its checks (`checks`) into the typed objects (`model`), every problem collected before
`ConfigError` is raised; and the notes `mta check` adds about a valid file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from mta.config.checks import (
    DKIM_FIELDS,
    PATTERN_FIELDS,
    POLICY_FIELDS,
    ROUTE_FIELDS,
    SECTIONS,
    _Collector,
    _domain_pattern,
    _domain_patterns,
    _list,
    _mx_list,
    _named_map,
    _policy,
)
from mta.config import inbound as inbound_config
from mta.config import sources as submission
from mta.config.model import (
    DEFAULT_POLICY,
    Config,
    ConfigError,
    DkimKey,
    Domain,
    Pattern,
    Policy,
    Provider,
    Route,
    merge,
)
from shaper.retry import DELAY_LADDER, ladder_delay
from shaper.units import Duration


def parse_config(raw: Any) -> Config:
    """Convert a loaded YAML document; raises ConfigError listing every problem."""
    c = _Collector()
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"(top): expected a mapping, got {type(raw).__name__}"])
    known = set(SECTIONS) | {"default", "providers", "domains", "patterns", "routes", "dkim", "listeners", "sources",
                                "inbound", "envelope_verp"}
    for key in raw:
        if key not in known:
            c.problem(str(key), "unknown key")

    sections = {name: cls(**c.fields(name, raw.get(name), spec)) for name, (cls, spec) in SECTIONS.items()}
    if sections["control"].key_env and sections["control"].key_file:
        c.problem("control", "give key_env or key_file, not both")

    default_overrides, _ = _policy(c, "default", raw.get("default"))
    default = merge(DEFAULT_POLICY, default_overrides)
    providers = _providers(c, raw.get("providers"))
    domains, domain_levels = _domains(c, raw.get("domains"))
    patterns = _patterns(c, raw.get("patterns"))
    routes = _routes(c, raw.get("routes"))
    keys = _dkim_keys(c, raw.get("dkim"))
    listeners = submission.listeners(c, raw.get("listeners"))
    sources = submission.sources(c, raw.get("sources"))
    submission.relay_problems(c, listeners, sources)
    inbound = inbound_config.inbound(c, raw.get("inbound"), listeners)
    verp = inbound_config.envelope_verp(c, raw.get("envelope_verp"))

    levels = [("default", default_overrides)] + [(f"providers.{p.name}", p.policy) for p in providers]
    levels += domain_levels + [(f"routes[{i}]", r.policy) for i, r in enumerate(routes)]
    _nested_timeouts(c, sections["smtp"].delivery_deadline, levels)
    if c.problems:
        raise ConfigError(c.problems)
    return Config(default=default, providers=tuple(providers), domains=tuple(domains), patterns=tuple(patterns), routes=tuple(routes), dkim=tuple(keys),
                  listeners=tuple(listeners), sources=tuple(sources), inbound=tuple(inbound), envelope_verp=verp,
                  **sections)


def _providers(c: _Collector, raw: Any) -> list[Provider]:
    providers = []
    for name, body in _named_map(c, "providers", raw).items():
        path = f"providers.{name}"
        policy, own = _policy(c, path, body, {"mx_suffix": _domain_patterns})
        if isinstance(body, dict):
            c.required(path, body, "mx_suffix")
        if "mx_suffix" in own:
            providers.append(Provider(str(name), own["mx_suffix"], policy))
    return providers


def _patterns(c: _Collector, raw: Any) -> list[Pattern]:
    patterns = []
    for i, body in enumerate(_list(c, "patterns", raw)):
        path = f"patterns[{i}]"
        policy, own = _policy(c, path, body, PATTERN_FIELDS)
        if not isinstance(body, dict):
            continue
        c.required(path, body, "action")
        if "match" not in body and "code" not in body and "enhanced" not in body:
            c.problem(path, "needs at least one of match, code, enhanced")
        if own.get("action") in ("suspend", "throttle") and "duration" not in body:
            c.problem(f"{path}.duration", f"required for action {own['action']}")
        _ignored_pattern_keys(c, path, body, own.get("action"))
        if "action" in own:
            patterns.append(Pattern(match=own.get("match"), action=own["action"], code=own.get("code"), enhanced=own.get("enhanced"), duration=own.get("duration"), policy=policy))
    return patterns


def _routes(c: _Collector, raw: Any) -> list[Route]:
    routes: list[Route] = []
    for i, body in enumerate(_list(c, "routes", raw)):
        path = f"routes[{i}]"
        policy, own = _policy(c, path, body, ROUTE_FIELDS)
        if not isinstance(body, dict):
            continue
        for key in ("sender_domain", "smarthost"):
            c.required(path, body, key)
        if "password_env" in own and "password_file" in own:
            c.problem(path, "give password_env or password_file, not both")
        c.no_password(path, body, "password_env or password_file")
        if "sender_domain" in own and "smarthost" in own:
            routes.append(_route(c, path, own, policy, routes))
    return routes


def _dkim_keys(c: _Collector, raw: Any) -> list[DkimKey]:
    keys = []
    for i, body in enumerate(_list(c, "dkim", raw)):
        path = f"dkim[{i}]"
        values = c.fields(path, body, DKIM_FIELDS)
        if not isinstance(body, dict):
            continue
        for key in ("domain", "selector", "key_file"):
            c.required(path, body, key)
        if all(k in values for k in ("domain", "selector", "key_file")):
            keys.append(DkimKey(**values))
    return keys


def _domains(c: _Collector, raw: Any) -> tuple[list[Domain], list[tuple[str, Policy]]]:
    """The `domains:` entries under the names mail is matched by, and each one's policy
    under its key path as written. Two names for one domain (`faß.de`, `xn--fa-hia.de`)
    are an error: only one of them could ever apply."""
    domains: list[Domain] = []
    levels: list[tuple[str, Policy]] = []
    written: dict[str, str] = {}
    for name, body in _named_map(c, "domains", raw).items():
        path = f"domains.{name}"
        policy, own = _policy(c, path, body, {"mx": _mx_list})
        try:
            ascii_name = _domain_pattern(name)
        except ValueError as exc:
            c.problem(path, str(exc))
            continue
        if ascii_name in written:
            c.problem(path, f"the same domain as domains.{written[ascii_name]} ({ascii_name}): give its rules once")
            continue
        written[ascii_name] = str(name)
        domains.append(Domain(ascii_name, policy, own.get("mx")))
        levels.append((path, policy))
    return domains, levels


# What each action does not use: a key it would ignore is an error, never silently accepted.
# A throttle's limits replace the destination's sending limits (mta.destinations.delivery); when a
# message is retried and when it expires stay the destination's rules.
_PATTERN_IGNORES = {
    "suspend": (tuple(POLICY_FIELDS), "a suspension sends nothing for `duration`; limits belong to action throttle"),
    "bounce": (("duration", *POLICY_FIELDS), "action bounce only decides the fate of the message that got the reply"),
    "retry": (("duration", *POLICY_FIELDS), "action retry only decides the fate of the message that got the reply"),
    "throttle": (("retry_intervals", "max_age"), "a throttle changes sending limits only; retries and "
                 "maximum age stay those of the destination's rules"),
}


def _ignored_pattern_keys(c: _Collector, path: str, body: dict, action: str | None) -> None:
    if action not in _PATTERN_IGNORES:
        return
    ignored, why = _PATTERN_IGNORES[action]
    for key in body:
        if key in ignored:
            c.problem(f"{path}.{key}", f"not used by action {action}: {why}")


def _nested_timeouts(c: _Collector, deadline: float, levels: list[tuple[str, Policy]]) -> None:
    """A step's timeout longer than the whole attempt's deadline could never run out: say so."""
    for path, policy in levels:
        for field in Policy.__struct_fields__:
            value = getattr(policy, field)
            if field.endswith("_timeout") and field != "idle_timeout" and value is not None and value > deadline:
                c.problem(f"{path}.{field}", f"{Duration(value)} is longer than smtp.delivery_deadline "
                                             f"({Duration(deadline)}), which ends every delivery attempt")


def _route(c: _Collector, path: str, own: dict[str, Any], policy: Policy, earlier: list[Route]) -> Route:
    """One `routes:` entry; its name (the destination `route:NAME`) must be unique."""
    sender_domain = own["sender_domain"]
    name = own.get("name", sender_domain).lower()
    if not re.fullmatch(r"[a-z0-9*][a-z0-9_.*-]*", name):
        c.problem(f"{path}.name", f"invalid route name {name!r}: letters, digits, '.', '-', '_'")
    if any(r.name == name for r in earlier):
        c.problem(f"{path}.name" if "name" in own else path,
                  f"route name {name!r} is used twice: give each route its own `name`")
    return Route(sender_domain=sender_domain, smarthost=own["smarthost"], policy=policy,
                 username=own.get("username"), password_env=own.get("password_env"),
                 password_file=own.get("password_file"), tags=own.get("tags", ()), name=name,
                 sender_match=own.get("sender_match", "envelope"), implicit_tls=own.get("implicit_tls"),
                 ca_file=own.get("ca_file"), tls_verify=own.get("tls_verify", True))


def retry_notes(config: Config) -> list[str]:
    """`retry_intervals` that are not a delay queue's length (shaper.retry.DELAY_LADDER):
    not errors, the wait is rounded up to one; `mta check` says so."""
    levels = [("default", config.default)]
    levels += [(f"providers.{p.name}", p.policy) for p in config.providers]
    levels += [(f"domains.{d.name}", d.policy) for d in config.domains]
    levels += [(f"routes[{i}]", r.policy) for i, r in enumerate(config.routes)]
    notes = []
    for path, policy in levels:
        for i, seconds in enumerate(policy.retry_intervals or ()):
            if seconds in DELAY_LADDER:
                continue
            rung = Duration(ladder_delay(seconds))
            how = "rounded up" if seconds < DELAY_LADDER[-1] else "the longest delay there is"
            notes.append(f"{path}.retry_intervals[{i}]: {Duration(seconds)} is not a delay queue "
                         f"length; the retry waits {rung} ({how})")
    return notes


def load_config(path: str | Path) -> Config:
    """Read and validate a rules file; raises ConfigError naming every problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}"]) from None
    loader = _StrictLoader(text)
    try:
        raw = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    finally:
        loader.dispose()
    try:
        config = parse_config(raw)
    except ConfigError as exc:
        raise ConfigError(loader.duplicates + exc.problems) from None
    if loader.duplicates:
        raise ConfigError(loader.duplicates)
    return config


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that reports a key given twice in one mapping instead of keeping the last."""

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: local keys may override
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if duplicate:
                self.duplicates.append(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice "
                                       "in the same mapping; the file must say it once")
        return super().construct_mapping(node, deep=deep)
