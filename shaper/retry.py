"""When is a deferred message due again, and when do we give up on it?

Theory of operation: this answers the per-message question only ("when is this
message due?"); whether its destination may be contacted at that time is the
limiter's and the destination state's business. A schedule is a fixed list of
intervals (MailerQ's ``600,600,1800,1800,3600,3600,7200``; the last repeats)
and a maximum age counted from the first time the MTA accepted the message.

After the ``n``-th failed attempt the message waits ``intervals[n-1]``, but
never past its deadline: the wait is cut so that one last attempt happens at the
deadline itself, and the failure of that attempt expires the message. That way
a 24 h max age really means "tried until 24 h", not "until the last interval
that fitted". ``max_attempts`` (per message, 0 = no limit) is checked first.

Only failed delivery attempts count: mail parked because its destination was
paused or throttled must come back with the same ``attempts`` it left with, so a
pause never escalates a message's schedule (KumoMTA #322).

Every wait is one rung of ``DELAY_LADDER``, rounded up: a message waits in a broker
delay queue with a fixed TTL, one queue per rung and lane, so the number of queues is
bounded whatever intervals the rules or the producers ask for. Rounding up means a retry
is never sooner than asked (waits beyond the top rung are cut to it). At the deadline the
last attempt is rounded up too: it happens at the deadline or a little after it (never
later than the regular interval would have put it), so its failure expires the message
instead of adding attempts just before the deadline.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass

from shaper.units import Duration

__all__ = [
    "DELAY_LADDER",
    "MAX_MESSAGE_SECONDS",
    "DEFAULT_INTERVALS",
    "DEFAULT_MAX_AGE",
    "MAX_AGE",
    "MAX_ATTEMPTS",
    "RETRY",
    "RETRY_AT_DEADLINE",
    "RetryDecision",
    "RetrySchedule",
    "ladder_delay",
]

# Reasons, as constants so the engine can compare without retyping strings.
MAX_ATTEMPTS = "max attempts"
MAX_AGE = "max age"
RETRY = "retry"
RETRY_AT_DEADLINE = "retry at max age"

# MailerQ's defaults, also the ones in SPEC.md's example rules.
DEFAULT_INTERVALS: tuple[float, ...] = (600.0, 600.0, 1800.0, 1800.0, 3600.0, 3600.0, 7200.0)
DEFAULT_MAX_AGE = 86400.0

# Seconds a message may wait in a delay queue: the rungs an operator would write down.
# Every hold delay (shaper.allowance) and the default intervals are rungs, so they wait
# exactly as long as they say; at most 2 x 20 delay queues exist (two lanes).
DELAY_LADDER: tuple[int, ...] = (
    1, 2, 5, 10, 15, 30,                      # seconds
    60, 120, 300, 600, 900, 1200, 1800,       # 1, 2, 5, 10, 15, 20, 30 min
    3600, 7200, 14400, 28800, 43200,          # 1, 2, 4, 8, 12 h
    86400, 172800,                            # 1, 2 d
)

# RabbitMQ refuses a TTL or queue expiry above 2^32-1 ms (49.7 days): a producer's
# per-message `retries` or `maxdelivertime` beyond it is not a wait anybody means.
MAX_MESSAGE_SECONDS = (2**32 - 1) / 1000


def ladder_delay(seconds: float) -> int:
    """The shortest rung of at least ``seconds`` (the top rung beyond it)."""
    if not seconds < DELAY_LADDER[-1]:  # also NaN: the longest wait there is
        return DELAY_LADDER[-1]
    return DELAY_LADDER[bisect_left(DELAY_LADDER, seconds)]


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """``retry`` False means the message expires now; ``delay`` is then 0.0."""

    retry: bool
    delay: float
    reason: str


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    intervals: tuple[float, ...] = DEFAULT_INTERVALS
    max_age: float = DEFAULT_MAX_AGE

    def __post_init__(self) -> None:
        intervals = tuple(float(i) for i in self.intervals)
        if not intervals:
            raise ValueError("retry intervals must not be empty")
        for i in intervals:
            if not math.isfinite(i) or i <= 0:
                raise ValueError(f"retry interval {i!r} must be a positive number of seconds")
        max_age = float(self.max_age)
        # inf is allowed: a producer may want attempts-only expiry.
        if math.isnan(max_age) or max_age <= 0:
            raise ValueError(f"max age {self.max_age!r} must be a positive number of seconds")
        object.__setattr__(self, "intervals", intervals)
        object.__setattr__(self, "max_age", max_age)

    @classmethod
    def parse(
        cls, intervals: Iterable[str | int | float], max_age: str | int | float
    ) -> RetrySchedule:
        """From the operators' spelling: ``parse(["10m", "30m", "1h"], "24h")``."""
        return cls(
            tuple(Duration.parse(i).seconds for i in intervals),
            Duration.parse(max_age).seconds,
        )

    def interval(self, attempts: int) -> float:
        """The uncapped wait after ``attempts`` failed attempts."""
        if attempts < 0:
            raise ValueError(f"attempts must not be negative, got {attempts}")
        # attempts == 0 (a message that never got as far as an attempt) waits
        # like the first retry rather than indexing from the end.
        return self.intervals[min(max(attempts, 1) - 1, len(self.intervals) - 1)]

    def deadline(self, first_seen: float) -> float:
        return first_seen + self.max_age

    def decide(
        self, attempts: int, first_seen: float, now: float, *, max_attempts: int = 0
    ) -> RetryDecision:
        """After ``attempts`` failed attempts, retry (and after how long) or expire."""
        if max_attempts < 0:
            raise ValueError(f"max_attempts must not be negative, got {max_attempts}")
        wait = self.interval(attempts)  # validates attempts before anything else
        if max_attempts > 0 and attempts >= max_attempts:
            return RetryDecision(False, 0.0, MAX_ATTEMPTS)
        deadline = self.deadline(first_seen)
        if now >= deadline:
            return RetryDecision(False, 0.0, MAX_AGE)
        remaining = deadline - now
        delay = ladder_delay(wait)
        if delay >= remaining:
            return RetryDecision(True, float(ladder_delay(remaining)), RETRY_AT_DEADLINE)
        return RetryDecision(True, float(delay), RETRY)
