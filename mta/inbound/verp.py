"""VERP: the envelope sender that says which message and which recipient a bounce is about.

A message for ``rcpt@example.org`` with id ``id`` leaves with the MAIL FROM

    <prefix><separator><escaped id>=<rcpt local part>=<rcpt domain>@<domain>
    bounces+550e8400-e29b-41d4-a716-446655440000=jane.doe=example.org@bounces.example

so that a bounce, however useless its body, names both by the address it is sent to.

Why this shape: the recipient half is the classic qmail/Postfix VERP (``local=domain``),
readable by a person reading a bounce. The id comes first and never contains ``=``
(every character but ASCII letters, digits and ``-`` is escaped as ``_XX``, the hex of
each UTF-8 octet), so decoding reads the id up to the first ``=`` and the recipient
domain after the last one: a ``=`` inside the recipient's local part (``a=b@x``) stays
where it is. Domains never hold ``=``.

Case: the prefix, our domain and the ``_XX`` escapes compare without case, and the
recipient domain is returned lower-cased, since relays change the case of domains.
RFC 5321 keeps local parts case-sensitive, so an id's own letters are returned as they
arrive; ids that are UUIDs (the MTA's default, lower-case hex) survive even a relay that
lower-cases everything.

Signed (`envelope_verp.key_env` or `key_file`): the address then starts with a tag, ten hex
digits of an HMAC-SHA256 of the id and the recipient under the key, and a dot
(``bounces+3f9c0a61b2.550e8400-...=jane.doe=example.org@bounces.example``); an address
whose tag does not match is not ours. Without a key, anyone who knows or guesses a message
id can write a bounce that puts any address of their choosing on the suppression list;
with one, only the receivers of our messages can.

Length: such a local part often exceeds RFC 5321's 64 octets (a UUID alone is 36).
Receivers tolerate it in practice (large senders' bounce addresses are as long), but a
strict one may refuse it; shorter ids make shorter addresses.
"""

from __future__ import annotations

import re

import hashlib
import hmac

from mta.config.model import VerpConfig

__all__ = ["Verp", "VerpConfig", "load_verp", "verp_address", "verp_decode"]

TAG = 10  # hex digits of the HMAC in a signed address (40 bits)


class Verp:
    """A configuration and its key, as the MTA uses them (the key never in a repr)."""

    __slots__ = ("prefix", "separator", "domain", "key")

    def __init__(self, config: VerpConfig, key: bytes | None = None):
        self.prefix, self.separator, self.domain = config.prefix, config.separator, config.domain
        self.key = key

    def __repr__(self) -> str:
        return f"Verp({self.prefix}{self.separator}...@{self.domain}, {'signed' if self.key else 'unsigned'})"


def load_verp(config: VerpConfig | None, environ=None) -> Verp | None:
    """The configuration with its key read (ConfigError when the key it names is missing)."""
    if config is None:
        return None
    from mta.ops.control import load_key

    return Verp(config, load_key(config, environ, section="envelope_verp"))

_SAFE = re.compile(r"[A-Za-z0-9-]")
_ESCAPE = re.compile(r"_([0-9A-Fa-f]{2})")
# Characters a recipient local part may hold to be carried inside ours unquoted: RFC 5322
# atext and dots, and (SMTPUTF8) anything beyond ASCII.
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\u0080-\U0010ffff-]+")


def _escape(message_id: str) -> str:
    return "".join(c if _SAFE.fullmatch(c) else "".join(f"_{b:02X}" for b in c.encode("utf-8"))
                   for c in message_id)


def _unescape(text: str) -> str | None:
    if not text or "_" in _ESCAPE.sub("", text) or not re.fullmatch(r"[A-Za-z0-9_-]+", text):
        return None  # a lone "_" or a character we never write: not ours
    octets = bytearray()
    for piece in re.split(r"(_[0-9A-Fa-f]{2})", text):
        octets += bytes([int(piece[1:], 16)]) if _ESCAPE.fullmatch(piece) else piece.encode("ascii")
    try:
        return octets.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _tag(key: bytes, message_id: str, recipient: str) -> str:
    data = f"{message_id}\0{recipient}".encode("utf-8", "surrogatepass")
    return hmac.new(key, data, hashlib.sha256).hexdigest()[:TAG]


def verp_address(verp: VerpConfig | Verp, message_id: str, recipient: str) -> str:
    """The MAIL FROM that carries `message_id` and `recipient`; ValueError for a recipient
    whose local part cannot travel unquoted (a quoted string, spaces)."""
    local, at, domain = recipient.rpartition("@")
    if not (at and message_id and domain and _LOCAL.fullmatch(local)) or "@" in local:
        raise ValueError(f"cannot carry {recipient!r} in a VERP address")
    domain = domain.lower()
    key = getattr(verp, "key", None)
    tag = f"{_tag(key, message_id, f'{local}@{domain}')}." if key else ""
    return f"{verp.prefix}{verp.separator}{tag}{_escape(message_id)}={local}={domain}@{verp.domain}"


def verp_decode(verp: VerpConfig | Verp, address: str) -> tuple[str, str] | None:
    """(message id, recipient) from an address `verp_address` made, or None when the
    address is not one of ours."""
    address = address.strip().strip("<>").strip()
    local, at, domain = address.rpartition("@")
    if not at or domain.rstrip(".").casefold() != verp.domain.rstrip(".").casefold():
        return None
    head = f"{verp.prefix}{verp.separator}"
    if not local.casefold().startswith(head.casefold()):
        return None
    escaped, eq, rest = local[len(head):].partition("=")
    rcpt_local, eq2, rcpt_domain = rest.rpartition("=")
    key = getattr(verp, "key", None)
    tag = ""
    if key:
        tag, dot, escaped = escaped.partition(".")
        if not dot:
            return None
    message_id = _unescape(escaped)
    if not (eq and eq2 and message_id and rcpt_local and rcpt_domain):
        return None
    recipient = f"{rcpt_local}@{rcpt_domain.lower()}"
    if key and not hmac.compare_digest(tag.lower().encode(), _tag(key, message_id, recipient).encode()):
        return None  # forged, or made under another key
    return message_id, recipient
