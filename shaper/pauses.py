"""Which domains, destinations, providers or routes are paused, and until when.

Theory of operation: an operator's `mta pause TARGET [--for D]` reaches every process as a
signed control message (mta.control); a route whose smarthost refuses its credentials is
paused the same way. A pause names a target (a domain, a destination key, `provider:NAME`,
`route:NAME`), lower-cased without a trailing dot, and ends at a Unix time or only with a
resume. Pauses are bounded: at most MAX_PAUSES at once (ended ones are forgotten first),
none more than MAX_PAUSE ahead, no target longer than MAX_TARGET characters, so nobody who
may send control messages can grow this without bound.

Pure: the time is an argument.
"""

from __future__ import annotations

import math

__all__ = ["MAX_PAUSE", "MAX_PAUSES", "MAX_TARGET", "Pauses", "is_time", "pause_problem"]

MAX_PAUSES = 10_000  # operator pauses kept at once; far more targets than anyone pauses by hand
MAX_PAUSE = 30 * 86400.0  # seconds: a pause ends at most this far ahead (`mta resume` or a new pause extends)
MAX_TARGET = 1000  # characters of a pause target (domains are at most 253; destination keys list MX hosts)


class Pauses:
    """Which domains or destinations are paused, until when (None: until resumed)."""

    def __init__(self) -> None:
        self._until: dict[str, float | None] = {}

    def apply(self, command: dict, now: float) -> str | None:
        """Apply a pause or resume command; returns the name it changed, or None if it was
        not one or was refused (`refusal` says why)."""
        name = _target(command)
        if not name:
            return None
        if command.get("command") == "pause":
            if self.refusal(command, now) is not None:
                return None
            until = command.get("until")
            self._until[name] = float(until) if until is not None else None
            return name
        if command.get("command") == "resume":
            self._until.pop(name, None)
            return name
        return None

    def refusal(self, command: dict, now: float) -> str | None:
        """Why this pause command would be refused (None: it would be applied)."""
        name = _target(command)
        if not name:
            return "no target"
        problem = pause_problem(name, command.get("until"), now)
        if problem is None and name not in self._until and len(self._until) >= MAX_PAUSES:
            self._forget_ended(now)
            if len(self._until) >= MAX_PAUSES:
                problem = f"{MAX_PAUSES} pauses are in force already; resume some first"
        return problem

    def _forget_ended(self, now: float) -> None:
        for name, until in list(self._until.items()):
            if until is not None and until <= now:
                del self._until[name]

    def paused(self, now: float, *names: str) -> bool:
        for name in names:
            if name in self._until:
                until = self._until[name]
                if until is None or until > now:
                    return True
                del self._until[name]
        return False

    def __bool__(self) -> bool:
        return bool(self._until)

    def __len__(self) -> int:
        return len(self._until)

    def active(self, now: float) -> dict[str, float | None]:
        """Pauses in force: target -> until (None: until resumed)."""
        return {name: until for name, until in list(self._until.items()) if until is None or until > now}


def _target(command: dict) -> str:
    return str(command.get("target", "")).lower().rstrip(".")


def pause_problem(target: str, until, now: float) -> str | None:
    """Why a pause of `target` until `until` (Unix time, None: until resumed) is refused."""
    if len(target) > MAX_TARGET:
        return f"the target is longer than {MAX_TARGET} characters"
    if until is None:
        return None
    if isinstance(until, bool) or not isinstance(until, (int, float)) or not math.isfinite(until):
        return f"its end {until!r} is not a time"
    if until - now > MAX_PAUSE:
        return f"it would end {(until - now) / 86400:.0f} days from now, more than {MAX_PAUSE / 86400:.0f}"
    return None


def is_time(until) -> bool:
    """None (no end) or a finite Unix time."""
    if until is None:
        return True
    return not isinstance(until, bool) and isinstance(until, (int, float)) and math.isfinite(until)
