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
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["ACTIONS", "PatternRule", "Patterns"]

ACTIONS = frozenset({"suspend", "throttle", "bounce", "retry"})


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
        line = f"{code} {text}" if code is not None else text
        for rule in self.rules:
            if rule.matches(code, enhanced, line):
                return rule
        return None

    def __bool__(self) -> bool:
        return bool(self.rules)
