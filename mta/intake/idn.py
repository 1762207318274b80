"""Domain names in the one ASCII form every comparison uses.

Intake maps recipient and sender domains with IDNA 2008 and UTS #46 (non-transitional):
`faß.de` is `xn--fa-hia.de`, as browsers and registries have it. Python's own "idna"
codec is IDNA 2003 and makes it `fass.de`, another domain. The rules file, DKIM keys and
the From header are mapped with the same function, so a name written in either form
meets the mail it names.
"""

from __future__ import annotations

import functools

import idna


@functools.lru_cache(maxsize=4096)  # mail to IDN domains repeats a few domains; idna is pure Python
def a_labels(domain: str) -> str | None:
    """`domain` (lower case, no trailing dot) in A-labels; None if it is no valid IDN."""
    try:
        return idna.encode(domain, uts46=True, transitional=False).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        return None


def ascii_domain(domain: str) -> str | None:
    """Lower case, no trailing dot, A-labels: the form intake gives `Address.ascii_domain`.
    An ASCII name comes back as it is written otherwise (only intake judges its syntax);
    None for a non-ASCII name that is no valid IDN, or for no name at all."""
    domain = domain.strip().rstrip(".").lower()
    if not domain.isascii():
        return a_labels(domain)
    return domain or None


def ascii_suffix(pattern: str) -> str | None:
    """`ascii_domain` of a name that may start with `*.` (a `domains:` or route wildcard) or
    `.` (an `mx_suffix`): the prefix is kept, the name after it mapped."""
    prefix = "*." if pattern.startswith("*.") else "." if pattern.startswith(".") else ""
    name = ascii_domain(pattern[len(prefix):])
    return None if name is None else prefix + name
