"""Durations and rates: the small value types of the operators' vocabulary.

Theory of operation: the YAML rules write time as ``90m``, ``10s``, ``24h`` and
rates as ``100/min``; everything below the configuration works in float seconds.
These two frozen types sit at that border. ``parse`` accepts what an operator
writes (or a plain number of seconds, which is what YAML gives for ``600``),
rejects anything else with an error that quotes the input, and ``str`` gives
back a spelling that parses to the same value, so ``mta check`` and ``mta
status`` can print rules in the operators' own words.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["Duration", "Rate"]

# Seconds per unit. Milliseconds divide instead of multiplying by 0.001, because
# 0.001 is not exact in binary and "1500ms" must come out as exactly 1.5 s.
_UNITS: dict[str, tuple[float, float]] = {}  # name -> (multiplier, divisor)
for _names, _scale in (
    (("ms", "msec", "msecs", "millisecond", "milliseconds"), (1.0, 1000.0)),
    (("s", "sec", "secs", "second", "seconds"), (1.0, 1.0)),
    (("m", "min", "mins", "minute", "minutes"), (60.0, 1.0)),
    (("h", "hr", "hrs", "hour", "hours"), (3600.0, 1.0)),
    (("d", "day", "days"), (86400.0, 1.0)),
):
    for _name in _names:
        _UNITS[_name] = _scale

# The spellings str() produces, largest first: "prefer the largest exact unit".
_CANONICAL = (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0))
# Rates read better with "min" than "m" ("100/min" is what SPEC.md writes).
_RATE_PERIODS = ((86400.0, "d"), (3600.0, "h"), (60.0, "min"), (1.0, "s"))

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_DURATION_RE = re.compile(rf"\s*(?P<number>{_NUMBER})\s*(?P<unit>[A-Za-z]*)\s*")


def _check_number(kind: str, raw: object, value: float) -> float:
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"invalid {kind} {raw!r}: must be a finite number")
    if value < 0:
        raise ValueError(f"invalid {kind} {raw!r}: must not be negative")
    return value + 0.0  # turns -0.0 into 0.0 so equal durations print alike


def _format_number(value: float) -> str:
    """Shortest spelling that float() reads back exactly."""
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


@dataclass(frozen=True, slots=True, order=True)
class Duration:
    """A non-negative span of time in seconds."""

    seconds: float

    def __post_init__(self) -> None:
        if isinstance(self.seconds, bool) or not isinstance(self.seconds, (int, float)):
            raise ValueError(f"invalid duration {self.seconds!r}: expected a number of seconds")
        seconds = _check_number("duration", self.seconds, float(self.seconds))
        object.__setattr__(self, "seconds", seconds)

    @classmethod
    def parse(cls, raw: str | int | float | Duration) -> Duration:
        """``"90m"``, ``"1.5s"``, ``"500ms"``, ``"2d"``, or a number of seconds."""
        if isinstance(raw, Duration):
            return raw
        if isinstance(raw, bool):  # YAML's yes/no must not become 1 s / 0 s
            raise ValueError(f"invalid duration {raw!r}: expected a string or a number")
        if isinstance(raw, (int, float)):
            return cls(_check_number("duration", raw, float(raw)))
        if not isinstance(raw, str):
            raise ValueError(f"invalid duration {raw!r}: expected a string or a number")
        match = _DURATION_RE.fullmatch(raw)
        if match is None:
            raise ValueError(
                f"invalid duration {raw!r}: expected a number and a unit such as 10s, 90m, 1h, 2d"
            )
        unit = match["unit"].lower() or "s"  # "600" is seconds, as YAML's 600 is
        if unit not in _UNITS:
            raise ValueError(f"invalid duration {raw!r}: unknown unit {match['unit']!r}")
        multiplier, divisor = _UNITS[unit]
        value = _check_number("duration", raw, float(match["number"]))
        seconds = value * multiplier / divisor
        if math.isinf(seconds):
            raise ValueError(f"invalid duration {raw!r}: must be a finite number")
        return cls(seconds)

    def __float__(self) -> float:
        return self.seconds

    def __str__(self) -> str:
        # Try the readable spellings, keep the first that reads back exactly; the
        # check makes the round trip a guarantee rather than a hope about floats.
        if self.seconds == 0:
            return "0s"
        candidates = []
        for unit, size in _CANONICAL:
            count = self.seconds / size
            if count.is_integer() and count < 1e16:
                candidates.append(f"{int(count)}{unit}")
        millis = self.seconds * 1000.0
        if self.seconds < 1 and millis.is_integer():
            candidates.append(f"{int(millis)}ms")
        for text in candidates:
            if Duration.parse(text) == self:
                return text
        return f"{self.seconds!r}s"


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` events per ``period`` seconds, e.g. ``Rate.parse("100/min")``."""

    count: float
    period: float

    def __post_init__(self) -> None:
        for name, value in (("count", self.count), ("period", self.period)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"invalid rate: {name} {value!r} is not a number")
            if not math.isfinite(value) or value <= 0:
                raise ValueError(
                    f"invalid rate: {name} must be a positive finite number, not {value!r}"
                )
        object.__setattr__(self, "count", float(self.count))
        object.__setattr__(self, "period", float(self.period))

    @classmethod
    def parse(cls, raw: str | Rate) -> Rate:
        """``"N/s"``, ``"N/min"``, ``"N/h"``, ``"N/d"`` (and long names such as
        ``N/hour``); the period may also be a duration such as ``N/5min``."""
        if isinstance(raw, Rate):
            return raw
        if not isinstance(raw, str):
            raise ValueError(f"invalid rate {raw!r}: expected a string such as '100/min'")
        count_text, slash, period_text = raw.partition("/")
        if not slash:
            raise ValueError(f"invalid rate {raw!r}: expected N/period, such as 100/min")
        count_text = count_text.strip()
        try:
            count = float(count_text)
        except ValueError:
            raise ValueError(
                f"invalid rate {raw!r}: count {count_text!r} is not a number"
            ) from None
        if not math.isfinite(count) or count <= 0:
            raise ValueError(f"invalid rate {raw!r}: count must be a positive finite number")
        period = _parse_period(raw, period_text.strip())
        return cls(count, period)

    @property
    def per_second(self) -> float:
        return self.count / self.period

    @property
    def interval(self) -> float:
        """Seconds between two events when they are evenly spaced."""
        return self.period / self.count

    def __str__(self) -> str:
        count = _format_number(self.count)
        for size, unit in _RATE_PERIODS:
            if self.period == size:
                return f"{count}/{unit}"
        return f"{count}/{Duration(self.period)}"


def _parse_period(raw: str, text: str) -> float:
    unit = text.lower()
    if unit in _UNITS:  # the common case: a bare unit, "min"
        multiplier, divisor = _UNITS[unit]
        return multiplier / divisor
    if text[:1].isdigit() or text[:1] == ".":  # "5min": a period given as a duration
        try:
            period = Duration.parse(text).seconds
        except ValueError:
            raise ValueError(f"invalid rate {raw!r}: unknown period {text!r}") from None
        if period > 0:
            return period
        raise ValueError(f"invalid rate {raw!r}: the period must be longer than zero")
    raise ValueError(f"invalid rate {raw!r}: unknown period {text!r}")
