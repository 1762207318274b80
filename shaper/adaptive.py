"""A message rate that finds a receiver's unknown limit and stays near it.

Theory of operation (additive increase, multiplicative decrease, as TCP does for
bandwidth): the operator's ``max_message_rate`` is a ceiling. While receivers
accept, the destination runs at it. When a receiver answers "rate limited"
(a 421/451 rate reply, never a bounce), the rate drops to ``DECREASE`` times the
rate the receiver was *accepting* when it said so: that is the best estimate of
its limit (a destination configured for 100/s whose receiver takes 10/s goes
to 8/s, not to 80/s). One signal never cuts the rate below ``MIN_FACTOR`` of
what it was, so a receiver that refuses everything for a moment is not
answered with a crawl. Replies to messages that were already in flight when we
slowed down carry no news, so one decrease per ``COOLDOWN`` seconds is all a
burst of them can cause. After ``STEP_EVERY`` seconds without a rate reply the
rate climbs by ``INCREASE`` of itself (at least ``MIN_STEP`` of the ceiling)
until it is back at the ceiling and the adaptation is dropped. A receiver with
limit R is thus held on a slow sawtooth between about 0.8 R and R, and is told
"too fast" once per climb, not on every message.

The observed rate comes from an ``AcceptMeter``: what receivers accepted per second
over the last second or two. ``now`` and the observed rate come in as arguments; nothing
here reads a clock.
"""

from __future__ import annotations

__all__ = ["AcceptMeter", "AdaptiveRate"]

DECREASE = 0.8  # factor applied to the accepted rate on a rate reply
MIN_FACTOR = 0.25  # one signal cuts the rate to no less than this share of it
INCREASE = 0.1  # of the current rate, per step
MIN_STEP = 0.01  # of the ceiling: the smallest step up
STEP_EVERY = 5.0  # seconds without a rate reply before each step up
COOLDOWN = 2.0  # seconds during which further rate replies cause no new decrease
FLOOR = 1.0 / 60  # never below one message a minute


class AdaptiveRate:
    """The current message rate (per second) of one destination."""

    __slots__ = ("_ceiling", "_current", "_changed", "decreases")

    def __init__(self, ceiling: float) -> None:
        self._ceiling = _positive(ceiling)
        self._current: float | None = None  # None: not adapting, the ceiling applies
        self._changed = 0.0
        self.decreases = 0

    @property
    def ceiling(self) -> float:
        return self._ceiling

    @property
    def current(self) -> float:
        return self._ceiling if self._current is None else self._current

    @property
    def adapting(self) -> bool:
        return self._current is not None

    def set_ceiling(self, ceiling: float) -> None:
        """A reload or a throttle: the new ceiling caps what was learned."""
        self._ceiling = _positive(ceiling)
        if self._current is not None and self._current >= self._ceiling:
            self._current = None

    def on_rate_limited(self, now: float, accepted: float) -> bool:
        """The receiver said "too fast" while accepting ``accepted`` messages per
        second. Returns True when the rate changed."""
        if self._current is not None and now - self._changed < COOLDOWN:
            return False
        current = self.current
        target = min(current * DECREASE, max(accepted * DECREASE, current * MIN_FACTOR))
        self._current = min(self._ceiling, max(min(FLOOR, self._ceiling), target))
        self._changed = now
        self.decreases += 1
        return True

    def adopt(self, now: float, rate: float) -> bool:
        """Another sender to the same receiver (another node) learned ``rate``: take it
        when it is lower, as if told "too fast" here, and climb back from it the same way.
        Returns True when the rate changed."""
        if not rate < self.current:
            return False
        self._current = min(self._ceiling, max(min(FLOOR, self._ceiling), rate))
        self._changed = now
        return True

    def tick(self, now: float) -> bool:
        """Climb one step if ``STEP_EVERY`` has passed quietly. Returns True when
        the rate changed."""
        if self._current is None or now - self._changed < STEP_EVERY:
            return False
        stepped = self._current + max(INCREASE * self._current, MIN_STEP * self._ceiling)
        self._current = None if stepped >= self._ceiling else stepped
        self._changed = now
        return True

    def __repr__(self) -> str:
        return f"AdaptiveRate(ceiling={self._ceiling}, current={self.current})"


def _positive(value: float) -> float:
    if not value > 0:
        raise ValueError(f"a rate must be positive, got {value!r}")
    return float(value)


class AcceptMeter:
    """Messages the receiver accepted per second, over the last second or two."""

    __slots__ = ("_second", "_count", "_previous")

    def __init__(self) -> None:
        self._second = 0
        self._count = 0
        self._previous = 0

    def note(self, now: float) -> None:
        second = int(now)
        if second != self._second:
            self._previous = self._count if second == self._second + 1 else 0
            self._second, self._count = second, 0
        self._count += 1

    def rate(self, now: float) -> float:
        second = int(now)
        if second == self._second:
            return (self._previous + self._count) / (1.0 + now - second)
        return self._count / (1.0 + now - second) if second == self._second + 1 else 0.0
