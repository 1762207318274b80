"""The YAML rules file, loaded into frozen typed objects.

Every problem in a file is collected with its key path (`domains.slow.example.max_message_rate:
invalid rate '20/our': unknown period 'our'`) and reported together: an operator fixes a
file in one pass, and a bad file never starts the MTA or replaces the rules in force.
Unknown keys are errors too: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import yaml

from mta.intake.idn import ascii_domain, ascii_suffix
from shaper.patterns import nested_quantifier
from shaper.retry import DEFAULT_INTERVALS, DEFAULT_MAX_AGE, DELAY_LADDER, ladder_delay
from shaper.units import Duration, Rate


class ConfigError(Exception):
    """A rules file that cannot be used; `problems` lists every fault with its key path."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class Broker(msgspec.Struct, frozen=True):
    url: str = "amqp://guest:guest@localhost:5672/"
    queue_type: str = "quorum"
    # Deliveries held unacknowledged per lane: enough to keep every destination busy,
    # small enough that a crash redelivers (and may duplicate) only this many.
    prefetch: int = 1000
    single_prefetch: int = 100
    # Octets of unsettled deliveries a lane takes into memory (0: no bound but the counts):
    # 1,000 messages of 20 MB would otherwise be 20 GB. 64 MiB keeps 1,000 of 64 KB in
    # flight, more than a busy lane of small mail ever needs.
    prefetch_bytes: int = 64 * 1024 * 1024
    # A message redelivered this many times (it crashed the process each time) is quarantined.
    delivery_limit: int = 10
    publish_timeout: float = 30.0
    # Final outcomes on disk (mta.settle.journal), so a crash does not send a delivered message
    # again: "auto" is the rules file's path + ".outcomes" when that can be written,
    # "" none, anything else a file (relative: to the rules file's directory).
    journal: str = "auto"


class Dns(msgspec.Struct, frozen=True):
    nameservers: tuple[str, ...] | None = None
    port: int = 53
    timeout: float = 5.0
    min_ttl: float = 30.0
    max_ttl: float = 3600.0


class Smtp(msgspec.Struct, frozen=True):
    port: int = 25
    helo: str | None = None
    bind: str | None = None
    max_message_size: int = 50 * 1024 * 1024
    ca_file: str | None = None  # CA bundle for `tls: verified`; None: the system's
    # Outbound connections of all destinations together; None: what the file-descriptor
    # limit allows (mta.destinations.budget). More than the limit allows is clamped at start, with a warning.
    max_connections: int | None = None
    # One delivery attempt (connecting through the MX hosts, then the transaction) ends by
    # this deadline: far below RabbitMQ's consumer_timeout (30 min by default), which
    # would otherwise close the channel and redeliver the message while it is still being sent.
    delivery_deadline: float = 300.0
    # Per attempt, at most this many MX hosts and this many addresses of each are tried
    # (Postfix's smtp_mx_address_limit and smtp_mx_session_limit): a domain with twenty
    # dead MX hosts costs one bounded attempt, not twenty connect timeouts.
    max_mx_hosts: int = 5
    max_addresses_per_mx: int = 2
    # Seconds transactions on the wire get to finish after SIGTERM; then they are cut off.
    shutdown_grace: float = 60.0


class Metrics(msgspec.Struct, frozen=True):
    port: int = 9108  # 0 disables the endpoint
    address: str = "127.0.0.1"


class Control(msgspec.Struct, frozen=True):
    """Where the key that signs control commands comes from (mta.control); none: unsigned."""

    key_env: str | None = None
    key_file: str | None = None


class Policy(msgspec.Struct, frozen=True):
    """Limits and policies of one destination; `None` means inherit from the level above."""

    connection_limit: int | None = None
    max_message_rate: Rate | None = None
    max_connection_rate: Rate | None = None
    max_deliveries_per_connection: int | None = None
    idle_timeout: float | None = None
    retry_intervals: tuple[float, ...] | None = None
    max_age: float | None = None
    tls: str | None = None
    connect_timeout: float | None = None
    ehlo_timeout: float | None = None
    starttls_timeout: float | None = None
    mail_from_timeout: float | None = None
    rcpt_to_timeout: float | None = None
    data_timeout: float | None = None
    data_dot_timeout: float | None = None
    single_connections: int | None = None  # connections bulk mail leaves for the single lane
    single_rate_share: float | None = None  # share of max_message_rate kept for the single lane


DEFAULT_POLICY = Policy(
    connection_limit=10,
    max_message_rate=Rate.parse("100/s"),
    max_connection_rate=Rate.parse("100/min"),
    max_deliveries_per_connection=100,
    idle_timeout=60.0,
    retry_intervals=DEFAULT_INTERVALS,
    max_age=DEFAULT_MAX_AGE,
    tls="opportunistic",
    connect_timeout=30.0,
    ehlo_timeout=60.0,
    starttls_timeout=60.0,
    mail_from_timeout=60.0,
    rcpt_to_timeout=60.0,
    data_timeout=60.0,
    data_dot_timeout=120.0,
    single_connections=1,
    single_rate_share=0.05,
)


class Provider(msgspec.Struct, frozen=True):
    name: str
    mx_suffix: tuple[str, ...]
    policy: Policy


class Domain(msgspec.Struct, frozen=True):
    name: str
    policy: Policy
    mx: tuple[str, ...] | None = None


class Pattern(msgspec.Struct, frozen=True):
    match: str | None
    action: str
    code: int | None = None
    enhanced: str | None = None
    duration: float | None = None
    policy: Policy = Policy()


class Route(msgspec.Struct, frozen=True):
    sender_domain: str
    smarthost: str
    policy: Policy
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    tags: tuple[str, ...] = ()
    name: str = ""  # the destination key is `route:NAME`; defaults to sender_domain
    sender_match: str = "envelope"  # match the envelope (MAIL FROM) domain, or the From: header's
    implicit_tls: bool | None = None  # TLS from the first byte; None: only on port 465
    ca_file: str | None = None  # CA bundle for `tls: verified` and the credentials; None: the system's
    tls_verify: bool = True  # credentials only over TLS whose certificate names the smarthost


class DkimKey(msgspec.Struct, frozen=True):
    domain: str
    selector: str
    key_file: str
    algorithm: str = "rsa-sha256"


class Config(msgspec.Struct, frozen=True):
    broker: Broker = Broker()
    dns: Dns = Dns()
    smtp: Smtp = Smtp()
    metrics: Metrics = Metrics()
    control: Control = Control()
    default: Policy = DEFAULT_POLICY
    providers: tuple[Provider, ...] = ()
    domains: tuple[Domain, ...] = ()
    patterns: tuple[Pattern, ...] = ()
    routes: tuple[Route, ...] = ()
    dkim: tuple[DkimKey, ...] = ()


# --- field parsers: each takes the YAML value and returns the typed value or raises ValueError


def _int(lo: int, hi: int | None = None) -> Callable[[Any], int]:
    def parse(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"expected a whole number, got {v!r}")
        if v < lo or (hi is not None and v > hi):
            raise ValueError(f"{v} is out of range ({lo}..{hi if hi is not None else ''})")
        return v

    return parse


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError(f"expected a non-empty string, got {v!r}")
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return v


def _text(v: Any) -> str:
    """A string that may be empty (`broker.journal: ""` turns the journal off)."""
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {v!r}")
    return v


def _opt_str(v: Any) -> str | None:
    return None if v is None else _str(v)


def _opt_int(lo: int, hi: int | None = None) -> Callable[[Any], int | None]:
    whole = _int(lo, hi)
    return lambda v: None if v is None else whole(v)


def _choice(*options: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if v not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {v!r}")
        return v

    return parse


def _duration(v: Any) -> float:
    try:
        return Duration.parse(v).seconds
    except OverflowError:  # float() of a huge YAML integer
        raise ValueError(f"invalid duration {v!r}: too large") from None


def _positive_duration(v: Any) -> float:
    seconds = _duration(v)
    if seconds <= 0:
        raise ValueError(f"expected a duration above zero, got {v!r}")
    return seconds


def _share(v: Any) -> float:
    """"5%" or 0.05: a share of a limit, at most one half."""
    if isinstance(v, str) and v.strip().endswith("%"):
        try:
            value = float(v.strip()[:-1]) / 100
        except ValueError:
            raise ValueError(f"expected a share such as 5% or 0.05, got {v!r}") from None
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        value = float(v)
    else:
        raise ValueError(f"expected a share such as 5% or 0.05, got {v!r}")
    if not 0 <= value <= 0.5:
        raise ValueError(f"{v!r} is out of range (0% .. 50%)")
    return value


def _rate(v: Any) -> Rate:
    if not isinstance(v, str):
        raise ValueError(f"invalid rate {v!r}: write it as N/s, N/min, N/h or N/d")
    return Rate.parse(v)


def _str_list(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v:
        raise ValueError(f"expected a non-empty list of strings, got {v!r}")
    return tuple(_str(item) for item in v)


def _intervals(v: Any) -> tuple[float, ...]:
    if not isinstance(v, list) or not v:
        raise ValueError(f"expected a non-empty list of durations, got {v!r}")
    out = []
    for i, item in enumerate(v):
        try:
            out.append(_positive_duration(item))
        except ValueError as exc:
            raise ValueError(f"[{i}] {exc}") from None
    return tuple(out)


def _regex(v: Any) -> str:
    text = _str(v)
    try:
        re.compile(text)
    except (re.error, OverflowError, RecursionError) as exc:  # a{99999999999} overflows
        raise ValueError(f"invalid regular expression {text!r}: {exc}") from None
    risk = nested_quantifier(text)
    if risk is not None:
        raise ValueError(f"regular expression {text!r} refused: {risk}")
    return text


def _enhanced(v: Any) -> str:
    text = _str(v)
    if not re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", text):
        raise ValueError(f"invalid enhanced status code {text!r}: expected e.g. 4.7.0")
    return text


def _smtp_code(v: Any) -> int:
    return _int(200, 599)(v)


def _domain_name(v: Any) -> str:
    """A domain name as intake compares it (mta.intake.idn): `faß.de` is `xn--fa-hia.de`."""
    return _checked_name(_str(v), ascii_domain)


def _domain_pattern(v: Any) -> str:
    """A domain name, or a `*.suffix` of one (or `.suffix`, in `mx_suffix`), in that form."""
    return _checked_name(v if isinstance(v, str) else str(v), ascii_suffix)


def _checked_name(text: str, mapping: Callable[[str], str | None]) -> str:
    name = mapping(text)
    if name is None:
        raise ValueError(f"{text!r} is not a valid domain name (IDNA 2008)")
    return name


def _domain_patterns(v: Any) -> tuple[str, ...]:
    out = []
    for i, item in enumerate(_str_list(v)):
        try:
            out.append(_domain_pattern(item))
        except ValueError as exc:
            raise ValueError(f"[{i}] {exc}") from None
    return tuple(out)


def _nameservers(v: Any) -> tuple[str, ...] | None:
    return None if v is None else _str_list(v)


def _host(v: Any, what: str = "mx") -> str:
    host = _str(v)
    m = re.fullmatch(r"(?:\[[^\]\s]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?", host)
    if not m or (m[1] is not None and not 0 < int(m[1]) <= 65535):
        raise ValueError(f"invalid {what} {host!r}: expected host, host:port or [address]:port")
    return host


def _mx_list(v: Any) -> tuple[str, ...]:
    return tuple(_host(host) for host in _str_list(v))


POLICY_FIELDS: dict[str, Callable[[Any], Any]] = {
    "connection_limit": _int(1, 10000),
    "max_message_rate": _rate,
    "max_connection_rate": _rate,
    "max_deliveries_per_connection": _int(1),
    "idle_timeout": _duration,
    "retry_intervals": _intervals,
    "max_age": _positive_duration,
    "tls": _choice("opportunistic", "required", "verified", "disabled"),
    "connect_timeout": _positive_duration,
    "ehlo_timeout": _positive_duration,
    "starttls_timeout": _positive_duration,
    "mail_from_timeout": _positive_duration,
    "rcpt_to_timeout": _positive_duration,
    "data_timeout": _positive_duration,
    "data_dot_timeout": _positive_duration,
    "single_connections": _int(0, 10000),
    "single_rate_share": _share,
}

SECTIONS: dict[str, tuple[type, dict[str, Callable[[Any], Any]]]] = {
    "broker": (
        Broker,
        {
            "url": _str,
            "queue_type": _choice("quorum", "classic"),
            "prefetch": _int(1, 65535),
            "single_prefetch": _int(1, 65535),
            "prefetch_bytes": _int(0),
            "delivery_limit": _int(1, 1000),
            "publish_timeout": _positive_duration,
            "journal": _text,
        },
    ),
    "dns": (
        Dns,
        {
            "nameservers": _nameservers,
            "port": _int(1, 65535),
            "timeout": _positive_duration,
            "min_ttl": _duration,
            "max_ttl": _positive_duration,
        },
    ),
    "smtp": (
        Smtp,
        {"port": _int(1, 65535), "helo": _opt_str, "bind": _opt_str, "max_message_size": _int(1),
         "ca_file": _opt_str, "max_connections": _opt_int(1, 1_000_000),
         "delivery_deadline": _positive_duration, "max_mx_hosts": _int(1, 100),
         "max_addresses_per_mx": _int(1, 100), "shutdown_grace": _positive_duration},
    ),
    "metrics": (Metrics, {"port": _int(0, 65535), "address": _str}),
    "control": (Control, {"key_env": _str, "key_file": _str}),
}


class _Collector:
    """Walks the YAML tree, converting fields and remembering every problem with its path."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def fields(self, path: str, raw: Any, spec: dict[str, Callable[[Any], Any]], *, extra: tuple[str, ...] = ()) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.problem(path, f"expected a mapping, got {type(raw).__name__}")
            return {}
        out: dict[str, Any] = {}
        for key, value in raw.items():
            where = f"{path}.{key}" if path else str(key)
            if key in extra:
                continue
            parse = spec.get(key)
            if parse is None:
                self.problem(where, "unknown key")
                continue
            try:
                out[key] = parse(value)
            except ValueError as exc:
                self.problem(where, str(exc))
        return out

    def required(self, path: str, raw: dict, key: str) -> None:
        if key not in raw:
            self.problem(f"{path}.{key}", "required")


def _policy(c: _Collector, path: str, raw: Any, extra_spec: dict[str, Callable[[Any], Any]] | None = None, extra: tuple[str, ...] = ()) -> tuple[Policy, dict[str, Any]]:
    spec = dict(POLICY_FIELDS)
    spec.update(extra_spec or {})
    values = c.fields(path, raw, spec, extra=extra)
    own = {k: values.pop(k) for k in list(values) if k not in POLICY_FIELDS}
    return Policy(**values), own


def _named_map(c: _Collector, path: str, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        c.problem(path, f"expected a mapping of names, got {type(raw).__name__}")
        return {}
    return raw


def _list(c: _Collector, path: str, raw: Any) -> list[Any]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        c.problem(path, f"expected a list, got {type(raw).__name__}")
        return []
    return raw


PATTERN_FIELDS = {
    "match": _regex,
    "code": _smtp_code,
    "enhanced": _enhanced,
    "action": _choice("suspend", "throttle", "bounce", "retry"),
    "duration": _positive_duration,
}

ROUTE_FIELDS = {
    "sender_domain": lambda v: _domain_pattern(_str(v)),
    "smarthost": lambda v: _host(v, "smarthost"),
    "username": _str,
    "password_env": _str,
    "password_file": _str,
    "tags": _str_list,
    "name": _str,
    "sender_match": _choice("envelope", "from"),
    "implicit_tls": _bool,
    "ca_file": _str,
    "tls_verify": _bool,
}

DKIM_FIELDS = {
    "domain": _domain_name,
    "selector": _str,
    "key_file": _str,
    "algorithm": _choice("rsa-sha256", "ed25519-sha256"),
}


def parse_config(raw: Any) -> Config:
    """Convert a loaded YAML document; raises ConfigError listing every problem."""
    c = _Collector()
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"(top): expected a mapping, got {type(raw).__name__}"])
    known = set(SECTIONS) | {"default", "providers", "domains", "patterns", "routes", "dkim"}
    for key in raw:
        if key not in known:
            c.problem(str(key), "unknown key")

    sections = {name: cls(**c.fields(name, raw.get(name), spec)) for name, (cls, spec) in SECTIONS.items()}
    if sections["control"].key_env and sections["control"].key_file:
        c.problem("control", "give key_env or key_file, not both")

    default_overrides, _ = _policy(c, "default", raw.get("default"))
    default = merge(DEFAULT_POLICY, default_overrides)

    providers = []
    for name, body in _named_map(c, "providers", raw.get("providers")).items():
        path = f"providers.{name}"
        policy, own = _policy(c, path, body, {"mx_suffix": _domain_patterns})
        if isinstance(body, dict):
            c.required(path, body, "mx_suffix")
        if "mx_suffix" in own:
            providers.append(Provider(str(name), own["mx_suffix"], policy))

    domains, domain_levels = _domains(c, raw.get("domains"))

    patterns = []
    for i, body in enumerate(_list(c, "patterns", raw.get("patterns"))):
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

    routes = []
    for i, body in enumerate(_list(c, "routes", raw.get("routes"))):
        path = f"routes[{i}]"
        policy, own = _policy(c, path, body, ROUTE_FIELDS)
        if not isinstance(body, dict):
            continue
        for key in ("sender_domain", "smarthost"):
            c.required(path, body, key)
        if "password_env" in own and "password_file" in own:
            c.problem(path, "give password_env or password_file, not both")
        if "password" in body:
            c.problems.remove(f"{path}.password: unknown key")
            c.problem(f"{path}.password", "passwords are not written in the rules file: use password_env or password_file")
        if "sender_domain" in own and "smarthost" in own:
            routes.append(_route(c, path, own, policy, routes))

    keys = []
    for i, body in enumerate(_list(c, "dkim", raw.get("dkim"))):
        path = f"dkim[{i}]"
        values = c.fields(path, body, DKIM_FIELDS)
        if not isinstance(body, dict):
            continue
        for key in ("domain", "selector", "key_file"):
            c.required(path, body, key)
        if all(k in values for k in ("domain", "selector", "key_file")):
            keys.append(DkimKey(**values))

    levels = [("default", default_overrides)] + [(f"providers.{p.name}", p.policy) for p in providers]
    levels += domain_levels + [(f"routes[{i}]", r.policy) for i, r in enumerate(routes)]
    _nested_timeouts(c, sections["smtp"].delivery_deadline, levels)
    if c.problems:
        raise ConfigError(c.problems)
    return Config(default=default, providers=tuple(providers), domains=tuple(domains), patterns=tuple(patterns), routes=tuple(routes), dkim=tuple(keys), **sections)


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


def merge(base: Policy, override: Policy) -> Policy:
    """`override`'s set fields on top of `base`."""
    changes = {f: v for f in override.__struct_fields__ if (v := getattr(override, f)) is not None}
    return msgspec.structs.replace(base, **changes) if changes else base


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
