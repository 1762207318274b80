"""The `inbound:` and `envelope_verp:` sections (SPEC §8): where bounces and feedback-loop
reports arrive, and the envelope sender that tells which message a bounce is about."""

from __future__ import annotations

import re
from typing import Any

from mta.config.checks import _Collector, _choice, _domain_name, _domain_patterns, _int, _list, _str
from mta.config.model import Inbound, Listener, VerpConfig
from mta.config.sources import _address, size

INBOUND_FIELDS = {
    "address": _address,
    "domains": _domain_patterns,
    "max_message_size": size,
    "max_connections": _int(1, 100_000),
}


def _prefix(v: Any) -> str:
    text = _str(v)
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,30}[A-Za-z0-9])?", text) or ".." in text:
        raise ValueError(f"{text!r}: expected up to 32 letters, digits, dots, '-' or '_' (a local part's start)")
    return text


VERP_FIELDS = {"domain": _domain_name, "prefix": _prefix, "separator": _choice("+", "-"), "key_env": _str,
               "key_file": _str}


def inbound(c: _Collector, raw: Any, listeners: list[Listener]) -> list[Inbound]:
    out: list[Inbound] = []
    for i, body in enumerate(_list(c, "inbound", raw)):
        path = f"inbound[{i}]"
        values = c.fields(path, body, INBOUND_FIELDS)
        if not isinstance(body, dict):
            continue
        for key in ("address", "domains"):
            c.required(path, body, key)
        if "address" not in values or "domains" not in values:
            continue
        host, port = values.pop("address")
        taken = [x for x in (*listeners, *out) if x.host == host and x.port == port]
        if taken:
            c.problem(f"{path}.address", f"{host}:{port} is given twice (listeners and inbound listen apart)")
        out.append(Inbound(host=host, port=port, **values))
    return out


def envelope_verp(c: _Collector, raw: Any) -> VerpConfig | None:
    if raw is None:
        return None
    values = c.fields("envelope_verp", raw, VERP_FIELDS)
    if isinstance(raw, dict):
        c.required("envelope_verp", raw, "domain")
        if "key_env" in raw and "key_file" in raw:
            c.problem("envelope_verp", "give key_env or key_file, not both")
    if "domain" not in values:
        return None
    return VerpConfig(**values)
