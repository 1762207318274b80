"""What each key of a rules file may hold: a converter per field (the YAML value in, the
typed value out, or ValueError saying why not), the field tables of every section, and the
`_Collector` that walks a mapping through them, keeping every problem with its key path."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from mta.config.model import (Broker, Cluster, Console, ConsoleUser, Control, Dns, Metrics, MtaSts, Policy, Smtp,
                              Suppression, Tracking)
from mta.intake.idn import ascii_domain, ascii_suffix
from shaper.patterns import nested_quantifier
from shaper.units import Duration, Rate


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


def _store_url(v: Any) -> str:
    v = _str(v)
    if not v.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"expected a redis://, rediss:// or unix:// URL, got {v!r}")
    return v


def _postgres_url(v: Any) -> str:
    v = _str(v)
    if not v.startswith(("postgresql://", "postgres://")):
        raise ValueError(f"expected a postgresql:// URL, got {v!r}")
    return v


def _node_name(v: Any) -> str:
    v = _str(v)
    if len(v) > 64 or not re.fullmatch(r"[A-Za-z0-9._-]+", v):
        raise ValueError(f"expected up to 64 letters, digits, '.', '_' or '-', got {v!r}")
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


def _console_users(v: Any) -> tuple[ConsoleUser, ...]:
    """`[{username, password_hash}]`: the hash as `mta hash-password` prints it, never a password."""
    from mta.submission.passwords import parse_hash

    if not isinstance(v, list):
        raise ValueError(f"expected a list of {{username, password_hash}}, got {type(v).__name__}")
    users, seen = [], set()
    for i, body in enumerate(v):
        if not isinstance(body, dict) or set(body) != {"username", "password_hash"}:
            raise ValueError(f"[{i}]: expected exactly username and password_hash (mta hash-password)")
        name = _str(body["username"])
        if ":" in name or name in seen:
            raise ValueError(f"[{i}]: username {name!r} " + ("repeated" if name in seen else "may not contain ':'"))
        try:
            parse_hash(_str(body["password_hash"]))
        except ValueError as exc:
            raise ValueError(f"[{i}].password_hash: {exc}") from None
        seen.add(name)
        users.append(ConsoleUser(name, body["password_hash"].strip()))
    return tuple(users)


POLICY_FIELDS: dict[str, Callable[[Any], Any]] = {
    "connection_limit": _int(1, 10000),
    "max_message_rate": _rate,
    "max_connection_rate": _rate,
    "max_deliveries_per_connection": _int(1),
    "idle_timeout": _duration,
    "retry_intervals": _intervals,
    "max_age": _positive_duration,
    "tls": _choice("dane", "mta-sts", "opportunistic", "required", "verified", "disabled"),
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
            "dnssec": _bool,
        },
    ),
    "mta_sts": (MtaSts, {"ca_file": _opt_str, "port": _int(1, 65535), "timeout": _positive_duration,
                         "wait": _duration, "reports": _bool, "report_from": _opt_str}),
    "smtp": (
        Smtp,
        {"port": _int(1, 65535), "helo": _opt_str, "bind": _opt_str, "max_message_size": _int(1),
         "ca_file": _opt_str, "max_connections": _opt_int(1, 1_000_000),
         "delivery_deadline": _positive_duration, "max_mx_hosts": _int(1, 100),
         "max_addresses_per_mx": _int(1, 100), "shutdown_grace": _positive_duration},
    ),
    "metrics": (Metrics, {"port": _int(0, 65535), "address": _str}),
    "console": (Console, {"enabled": _bool, "allow_pause": _bool, "users": _console_users}),
    "control": (Control, {"key_env": _str, "key_file": _str}),
    "cluster": (Cluster, {"store": _store_url, "node": _node_name}),
    "suppression": (Suppression, {"hard_bounces": _bool, "complaints": _bool, "expire": _duration,
                                  "scope": _choice("global", "source", "sender_domain"), "store": _postgres_url}),
    "tracking": (Tracking, {"enabled": _bool, "retention": _positive_duration, "stuck_after": _positive_duration,
                            "store": _postgres_url}),
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

    def no_password(self, path: str, raw: dict, instead: str) -> None:
        """A `password:` written in the file: said as such, not as an unknown key."""
        if "password" in raw:
            self.problems.remove(f"{path}.password: unknown key")
            self.problem(f"{path}.password", f"passwords are not written in the rules file: use {instead}")

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
