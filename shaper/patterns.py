"""Operators' response patterns: which reply asks for which action.

Theory of operation (KumoMTA's automation rules, MailerQ's flood patterns): each
rule has a regex searched in the whole reply as received (``421 4.7.0 Too many
connections``: code, enhanced code and text, the lines of a multi-line reply
joined by a space) and optional exact ``code`` / ``enhanced`` conditions. The
first rule whose conditions all hold wins. Its action is one of

* ``suspend``: send nothing to the destination that answered for ``duration``;
* ``throttle``: run that destination on the rule's reduced limits for ``duration``;
* ``bounce``: the reply is final (a bounce) whatever its code says;
* ``retry``: the reply is temporary whatever its code says.

A rule carries an opaque ``payload`` (the engine's reduced limits); nothing here
knows what a destination is.

A regex runs on a receiver's text, which nobody controls: the matcher looks at the first
``REPLY_TEXT_LIMIT`` bytes of a reply only, and ``nested_quantifier`` names the shapes
that backtrack catastrophically (``(a+)+``, ``(a*)*``, ``(.*a){20}``), which the rules
file refuses.
"""

from __future__ import annotations

import re
import re._parser as sre_parse  # the stdlib's own regex parser: the tree the engine runs
from dataclasses import dataclass
from typing import Any

__all__ = ["ACTIONS", "REPLY_TEXT_LIMIT", "PatternRule", "Patterns", "nested_quantifier"]

ACTIONS = frozenset({"suspend", "throttle", "bounce", "retry"})

# Bytes of a reply's text a pattern sees: what a receiver says about itself fits (RFC 5321
# lets a reply line be 512 octets), and a hostile multi-megabyte reply costs nothing more.
REPLY_TEXT_LIMIT = 512

_REPEATS = (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT)  # not POSSESSIVE_REPEAT: never backtracks
# A repetition of at least this many rounds around an unbounded one: O(n^3) steps and up.
_NESTED_ROUNDS = 3


def _children(value: Any):
    """The sub-patterns inside one node's arguments, whatever the node."""
    if isinstance(value, sre_parse.SubPattern):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _children(item)


def _has_unbounded_repeat(pattern: sre_parse.SubPattern) -> bool:
    for op, av in pattern.data:
        if op is sre_parse.ATOMIC_GROUP:  # (?>...) gives up its alternatives: safe inside
            continue
        if op in _REPEATS and av[1] is sre_parse.MAXREPEAT:
            return True
        if any(_has_unbounded_repeat(child) for child in _children(av)):
            return True
    return False


def _find_nested(pattern: sre_parse.SubPattern) -> bool:
    for op, av in pattern.data:
        if op in _REPEATS:
            low, high, body = av
            if (high is sre_parse.MAXREPEAT or high >= _NESTED_ROUNDS) and _has_unbounded_repeat(body):
                return True
        if any(_find_nested(child) for child in _children(av)):
            return True
    return False


def nested_quantifier(regex: str) -> str | None:
    """Why ``regex`` may take exponential (or high polynomial) time on a long reply, or
    None: an unbounded repetition inside a repetition (``(a+)+``, ``(a*)*``, ``(.*a){20}``).
    Conservative: ``(?:y(z+))*`` is refused too; a possessive ``z++`` or an atomic group
    ``(?>z+)`` says the same without backtracking."""
    try:
        tree = sre_parse.parse(regex)
    except (re.error, OverflowError, RecursionError):
        return None  # not this function's business: compiling it says what is wrong
    if _find_nested(tree):
        return ("a repetition inside a repetition (like (a+)+ or (.*a){20}) can take exponential "
                "time on a hostile reply; use a possessive quantifier (a++) or an atomic group "
                "(?>...) for the inner one, or drop it")
    return None


def _capped(text: str) -> str:
    """The first REPLY_TEXT_LIMIT bytes of ``text`` (UTF-8), cut at a character boundary."""
    if len(text) <= REPLY_TEXT_LIMIT // 4:  # cannot be longer in UTF-8
        return text
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= REPLY_TEXT_LIMIT:
        return text
    return data[:REPLY_TEXT_LIMIT].decode("utf-8", "ignore")


@dataclass(frozen=True, slots=True)
class PatternRule:
    index: int  # position in the rules file, for "which pattern matched"
    action: str
    regex: re.Pattern | None
    code: int | None = None
    enhanced: str | None = None
    duration: float | None = None
    payload: Any = None

    def matches(self, code: int | None, enhanced: str | None, line: str) -> bool:
        if self.code is not None and code != self.code:
            return False
        if self.enhanced is not None and enhanced != self.enhanced:
            return False
        return self.regex is None or self.regex.search(line) is not None

    def describe(self) -> str:
        parts = [f"patterns[{self.index}]"]
        if self.code is not None:
            parts.append(f"code {self.code}")
        if self.enhanced is not None:
            parts.append(f"enhanced {self.enhanced}")
        if self.regex is not None:
            parts.append(f"match {self.regex.pattern!r}")
        return " ".join(parts)


class Patterns:
    """An ordered rule list; ``find`` returns the first rule that applies."""

    __slots__ = ("rules",)

    def __init__(self, rules: list[PatternRule] | tuple[PatternRule, ...] = ()) -> None:
        for rule in rules:
            if rule.action not in ACTIONS:
                raise ValueError(f"unknown pattern action {rule.action!r}")
            if rule.action in ("suspend", "throttle") and not (rule.duration or 0) > 0:
                raise ValueError(f"pattern action {rule.action} needs a positive duration")
        self.rules = tuple(rules)

    @staticmethod
    def compile(index: int, action: str, match: str | None, **kw: Any) -> PatternRule:
        return PatternRule(index, action, re.compile(match) if match is not None else None, **kw)

    def find(self, code: int | None, enhanced: str | None, text: str) -> PatternRule | None:
        if not self.rules:
            return None
        text = _capped(text)
        line = f"{code} {text}" if code is not None else text
        for rule in self.rules:
            if rule.matches(code, enhanced, line):
                return rule
        return None

    def __bool__(self) -> bool:
        return bool(self.rules)
