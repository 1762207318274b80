"""What an entry is looked up by: the address (the domain lower-cased, the local part as
given: RFC 5321 leaves its case to the receiver) within a scope, as one 64-bit number."""

from __future__ import annotations

import hashlib

SCOPES = ("global", "source", "sender_domain")


def normalize(address: str) -> str:
    local, at, domain = address.strip().rpartition("@")
    if not at:
        return address.strip()
    return f"{local}@{domain.lower().rstrip('.')}"


def scope_name(kind: str, value: str | None = None) -> str:
    """"global", "source:webshop", "sender_domain:shop.example"."""
    if kind == "global":
        return "global"
    if not value:
        raise ValueError(f"scope {kind} needs a value ({kind}:NAME)")
    return f"{kind}:{value.lower() if kind == 'sender_domain' else value}"


def parse_scope(text: str) -> str:
    """An operator's spelling of a scope, checked: ValueError saying why not."""
    kind, _, value = text.partition(":")
    if kind not in SCOPES:
        raise ValueError(f"unknown scope {text!r}: global, source:NAME or sender_domain:DOMAIN")
    return scope_name(kind, value or None)


def key(scope: str, address: str) -> int:
    """The entry's number (signed, as SQLite stores integers): scope and normalized address."""
    return key_of(scope, normalize(address))


def key_of(scope: str, normalized: str) -> int:
    """`key` of an address already normalized (per message it is normalized once, for every
    scope asked about). One blake2b of 8 octets: about a microsecond."""
    data = f"{scope}\0{normalized}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big", signed=True)
