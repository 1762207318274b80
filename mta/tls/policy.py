"""MTA-STS (RFC 8461) as values: the `_mta-sts` TXT record, the policy file, and which MX
hosts a policy allows. No I/O: `fetch` gets the texts, `cache` keeps the policies.

RFC 8461 §3.1: the TXT record is `v=STSv1; id=...;`, `v` first, `id` 1 to 32 letters and
digits; several records that start with `v=STSv1` mean no policy. §3.2: the policy file
is `key: value` lines (CRLF or LF), `version: STSv1`, `mode` (`enforce`, `testing`,
`none`), `max_age` (seconds, at most 31557600), one `mx` line per allowed pattern (none
needed for `none`); unknown keys are ignored. §4.1: a pattern matches an MX host by name,
case-insensitively; `*.example.com` matches exactly one leftmost label (`mx1.example.com`,
not `example.com` nor `a.b.example.com`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_AGE_LIMIT = 31_557_600  # RFC 8461 §3.2: about a year
MODES = ("enforce", "testing", "none")
_ID = re.compile(r"[A-Za-z0-9]{1,32}")


class PolicyError(ValueError):
    """A TXT record or policy file that is not valid MTA-STS; the text says why."""


@dataclass(frozen=True, slots=True)
class Policy:
    mode: str  # enforce | testing | none
    mx: tuple[str, ...]  # patterns, lower case, without a trailing dot
    max_age: int  # seconds

    def allows(self, host: str) -> bool:
        """Whether ``host`` (an MX host name) matches one of the policy's patterns."""
        return any(mx_matches(pattern, host) for pattern in self.mx)

    def describe(self) -> str:
        return f"mode {self.mode}, mx {', '.join(self.mx) or '(none)'}, max_age {self.max_age}s"


def parse_txt(records: list[str]) -> str | None:
    """The policy id of the `_mta-sts` TXT records (each one record, its strings joined);
    None when there is no STS record. Raises PolicyError for a record that claims STSv1
    but is invalid, or for several STS records (RFC 8461 §3.1: then no policy)."""
    sts = [r for r in records if r.strip().startswith("v=STSv1")]
    if not sts:
        return None
    if len(sts) > 1:
        raise PolicyError(f"{len(sts)} TXT records start with v=STSv1 (there must be one)")
    fields = {}
    for i, part in enumerate(p.strip() for p in sts[0].split(";")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise PolicyError(f"TXT field {part!r} has no '='")
        if i == 0 and (key.strip() != "v" or value.strip() != "STSv1"):
            raise PolicyError("TXT record does not begin with v=STSv1")
        fields.setdefault(key.strip(), value.strip())
    policy_id = fields.get("id")
    if policy_id is None or not _ID.fullmatch(policy_id):
        raise PolicyError(f"TXT record id {policy_id!r} is not 1 to 32 letters and digits")
    return policy_id


def parse_policy(text: str) -> Policy:
    """The policy file's content (decoded); raises PolicyError naming what is wrong."""
    fields: dict[str, str] = {}
    mx: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise PolicyError(f"policy line {line[:80]!r} has no ':'")
        key, value = key.strip(), value.strip()
        if key == "mx":
            mx.append(value.lower().rstrip("."))
        else:
            fields.setdefault(key, value)
    if fields.get("version") != "STSv1":
        raise PolicyError(f"policy version is {fields.get('version')!r}, not STSv1")
    mode = fields.get("mode")
    if mode not in MODES:
        raise PolicyError(f"policy mode {mode!r} is not one of {', '.join(MODES)}")
    age = fields.get("max_age", "")
    if not age.isdigit() or len(age) > 10 or int(age) > MAX_AGE_LIMIT:
        raise PolicyError(f"policy max_age {age!r} is not a number of seconds up to {MAX_AGE_LIMIT}")
    if mode != "none" and not mx:
        raise PolicyError(f"policy mode {mode} has no mx line")
    for pattern in mx:
        if not _valid_pattern(pattern):
            raise PolicyError(f"policy mx {pattern!r} is not a host name or *.suffix")
    return Policy(mode, tuple(mx), int(age))


def _valid_pattern(pattern: str) -> bool:
    name = pattern[2:] if pattern.startswith("*.") else pattern
    return bool(name) and "*" not in name and all(label for label in name.split("."))


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 §4.1: an exact name, or `*.suffix` standing for exactly one label."""
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return host == pattern
