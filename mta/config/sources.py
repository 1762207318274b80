"""The `listeners:` and `sources:` sections (SPEC §7): where applications submit mail over
SMTP, and who they are. Besides each value's form, the combinations that would make an
open relay or send a password in clear text are refused here, so `mta check` says so
before anything listens."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from mta.config.checks import _bool, _Collector, _choice, _domain_patterns, _int, _list, _named_map, _rate, _str, _str_list
from mta.config.model import Listener, Source, SourceUser

_SIZE = re.compile(r"(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 1000 ** 2, "mib": 1024 ** 2, "gb": 1000 ** 3, "gib": 1024 ** 3}


def size(v: Any) -> int:
    """10485760, "10MiB", "512 KB": a number of octets above zero."""
    if isinstance(v, int) and not isinstance(v, bool):
        value = v
    elif isinstance(v, str) and (m := _SIZE.fullmatch(v.strip())):
        value = int(m[1]) * _UNITS[(m[2] or "b").lower()]
    else:
        raise ValueError(f"expected a size such as 10MiB, 512KB or a number of octets, got {v!r}")
    if value < 1:
        raise ValueError(f"expected a size above zero, got {v!r}")
    return value


def network(v: Any) -> str:
    """An IPv4 or IPv6 network in CIDR form, host bits clear ("192.0.2.0/24"); a single
    address may be written without its length."""
    text = _str(v).strip()
    try:
        return str(ipaddress.ip_network(text, strict=True))
    except ValueError as exc:
        raise ValueError(f"invalid network {text!r}: {exc}") from None


def networks(v: Any) -> tuple[str, ...]:
    out = []
    for i, item in enumerate(v if isinstance(v, list) else [v]):
        try:
            out.append(network(item))
        except ValueError as exc:
            raise ValueError(f"[{i}] {exc}") from None
    if not out:
        raise ValueError("expected a non-empty list of networks")
    return tuple(out)


def _address(v: Any) -> tuple[str, int]:
    text = _str(v).strip()
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\s\[\]]+):(\d{1,5})", text)
    if not m:
        raise ValueError(f"invalid address {text!r}: expected host:port or [IPv6]:port")
    host, port = (m[1], int(m[2])) if m[1] else (m[3], int(m[4]))
    if not 0 < port <= 65535:
        raise ValueError(f"invalid port in {text!r}")
    return host, port


LISTENER_FIELDS = {
    "address": _address,
    "tls": _choice("starttls", "implicit", "none"),
    "cert_file": _str,
    "key_file": _str,
    "proxy_protocol": _bool,
    "proxy_from": networks,
}

USER_FIELDS = {"username": _str, "password_env": _str, "password_file": _str, "password_hash": _str}

SOURCE_FIELDS = {
    "auth": _choice("password", "none"),
    "allow_ips": networks,
    "sender_domains": _domain_patterns,
    "lane": _choice("single", "bulk"),
    "tags": _str_list,
    "max_message_rate": _rate,
    "max_recipients": _int(1, 10000),
    "max_message_size": size,
    "line_endings": _choice("reject", "normalize"),
}


def listeners(c: _Collector, raw: Any) -> list[Listener]:
    out = []
    for i, body in enumerate(_list(c, "listeners", raw)):
        path = f"listeners[{i}]"
        values = c.fields(path, body, LISTENER_FIELDS)
        if not isinstance(body, dict):
            continue
        c.required(path, body, "address")
        tls = values.get("tls", "starttls")
        if tls != "none":
            for key in ("cert_file", "key_file"):
                if key not in body:
                    c.problem(f"{path}.{key}", f"required for tls: {tls}")
        if values.get("proxy_protocol") and "proxy_from" not in body:
            c.problem(f"{path}.proxy_from", "required with proxy_protocol: the load balancers' networks "
                                           "(anyone else could claim any client address)")
        if "address" in values:
            host, port = values.pop("address")
            if any(l.host == host and l.port == port for l in out):
                c.problem(f"{path}.address", f"{host}:{port} is given twice")
            out.append(Listener(host=host, port=port, **values))
    return out


def sources(c: _Collector, raw: Any) -> list[Source]:
    out: list[Source] = []
    usernames: dict[str, str] = {}
    for name, body in _named_map(c, "sources", raw).items():
        path = f"sources.{name}"
        values = c.fields(path, body, SOURCE_FIELDS, extra=("users",))
        if not isinstance(body, dict):
            continue
        users = _users(c, path, body.get("users"), usernames, str(name))
        auth = values.get("auth", "password")
        if auth == "none":
            if "allow_ips" not in values:
                c.problem(f"{path}.allow_ips", "required with auth: none (else anyone could send as this source: "
                                               "an open relay)")
            if "users" in body:
                c.problem(f"{path}.users", "not used with auth: none")
        elif not users and "users" not in body:
            c.problem(f"{path}.users", "required (or auth: none with allow_ips)")
        out.append(Source(name=str(name), users=tuple(users), **values))
    return out


def _users(c: _Collector, path: str, raw: Any, usernames: dict[str, str], source: str) -> list[SourceUser]:
    users = []
    for i, body in enumerate(_list(c, f"{path}.users", raw)):
        where = f"{path}.users[{i}]"
        values = c.fields(where, body, USER_FIELDS)
        if not isinstance(body, dict):
            continue
        c.required(where, body, "username")
        given = [k for k in ("password_env", "password_file", "password_hash") if k in body]
        if len(given) != 1:
            c.problem(where, "give exactly one of password_env, password_file, password_hash")
        c.no_password(where, body, "password_env, password_file or password_hash (mta hash-password)")
        if "password_hash" in values:
            from mta.submission.passwords import parse_hash

            try:
                parse_hash(values["password_hash"])
            except ValueError as exc:
                c.problem(f"{where}.password_hash", str(exc))
        username = values.get("username")
        if username is not None:
            if username in usernames:
                c.problem(f"{where}.username", f"{username!r} is also a user of sources.{usernames[username]}")
            usernames[username] = source
            users.append(SourceUser(**values))
    return users


def relay_problems(c: _Collector, listeners_: list[Listener], sources_: list[Source]) -> None:
    """The combinations SPEC §7 refuses: credentials on a listener off loopback without TLS,
    two sources known by the same address alone."""
    needs_credentials = any(s.auth == "password" for s in sources_)
    for i, listener in enumerate(listeners_):
        if listener.tls == "none" and needs_credentials and not _loopback(listener.host):
            c.problem(f"listeners[{i}].tls", f"tls: none on {listener.address}, which is not loopback, while "
                                             "sources log in with passwords: use starttls or implicit")
    if listeners_ and not sources_:
        c.problem("sources", "listeners are configured but no source may submit")
    if sources_ and not listeners_:
        c.problem("listeners", "sources are configured but nothing listens for them")
    seen: dict[str, str] = {}
    for source in sources_:
        if source.auth != "none":
            continue
        for net in source.allow_ips or ():
            if net in seen:
                c.problem(f"sources.{source.name}.allow_ips", f"{net} also identifies sources.{seen[net]}: "
                                                              "a client address must name one source")
            seen[net] = source.name


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"

