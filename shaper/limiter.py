"""An exact GCRA (generic cell rate algorithm) rate limiter.

Theory of operation: GCRA keeps one number, the theoretical arrival time
``tat``: when the next event would be due if events came exactly one emission
interval ``T = period / count`` apart. An event at ``now`` conforms when
``now >= tat - tau``, where the tolerance ``tau = (burst - 1) * T`` lets up to
``burst`` events through back to back; each admitted event pushes ``tat`` to
``max(tat, now) + T``. That is the whole state: no timer refills anything, so
an idle limiter costs nothing and ``now`` only ever comes in as an argument.

Guarantee: a rate of N per period with burst b admits at most N + b - 1 events
in any half-open window ``[t, t + period)``. (Each admission moves ``tat`` at
least T past the first admission of the window, and the k-th one needs
``t_k >= t_1 + (k - 1) T - tau``.)

To keep that exact rather than "up to rounding" without rational arithmetic on
every event, the state is in integer nanoseconds and every rounding leans the
safe way: ``T`` is rounded up (``T' >= T``) and ``tau`` is exactly
``(b - 1) T'``; ``now`` (a float, converted exactly through its integer ratio)
is rounded down where it is compared with ``tat - tau`` (an admission needs
``floor(now) >= tat - tau``, so ``now`` itself is past it too) and up where it
moves ``tat`` (``tat >= now + T'``). The proof above then holds with ``T'``,
and ``(k - b) T' < period <= N T'`` still gives ``k < N + b``. The price is at
most a nanosecond per interval of spacing. Only ``retry_after`` goes back to
float, rounded up, so that waiting exactly ``retry_after`` is always enough.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from shaper.units import Rate

__all__ = ["Decision", "Gcra", "message_burst"]

_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after: float  # 0.0 when allowed, else seconds until one would be


_ALLOWED = Decision(True, 0.0)


def _ns(now: float) -> tuple[int, int]:
    """``now`` in nanoseconds, rounded down and rounded up (exact: no float product)."""
    try:
        n, d = now.as_integer_ratio()
    except (OverflowError, ValueError):
        raise ValueError(f"now must be a finite number of seconds, got {now!r}") from None
    floor, rest = divmod(n * _NS, d)
    return floor, floor + (rest != 0)


def _float_up(q: Fraction) -> float:
    """The smallest float >= ``q`` (float() rounds to nearest, maybe down)."""
    f = float(q)
    return math.nextafter(f, math.inf) if Fraction(f) < q else f


def _wait_until(now: float, at_ns: int) -> float:
    """A wait ``d`` such that ``now + d``, added in floats, is >= ``at_ns`` nanoseconds.

    With ``x`` the smallest float >= ``at`` and ``d >= x - now`` exactly, the
    sum is a real >= ``x``; rounding it to nearest cannot go below the float
    ``x``, so the caller who sleeps ``d`` and asks again is admitted.
    """
    return _float_up(Fraction(_float_up(Fraction(at_ns, _NS))) - Fraction(now))


class Gcra:
    """Rate limiter state for one key (a destination, a route, a source IP)."""

    __slots__ = ("_burst", "_interval", "_rate", "_tat", "_tolerance")

    def __init__(self, rate: Rate, burst: int = 1) -> None:
        self._tat: int | None = None  # nanoseconds; None: never used, fully rested
        self._configure(rate, burst)

    def _configure(self, rate: Rate, burst: int) -> None:
        if not isinstance(rate, Rate):
            raise TypeError(f"rate must be a Rate, got {rate!r}")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValueError(f"burst must be an integer >= 1, got {burst!r}")
        self._rate = rate
        self._burst = burst
        # T rounded up to a whole nanosecond (at least one), tau exactly (b - 1) of those.
        self._interval = max(1, math.ceil(Fraction(rate.period) * _NS / Fraction(rate.count)))
        self._tolerance = (burst - 1) * self._interval

    @property
    def rate(self) -> Rate:
        return self._rate

    @property
    def burst(self) -> int:
        return self._burst

    def check(self, now: float) -> Decision:
        """Would one event be admitted at ``now``? Changes nothing."""
        floor, _ = _ns(now)
        if self._tat is None:
            return _ALLOWED
        allow_at = self._tat - self._tolerance
        if floor >= allow_at:
            return _ALLOWED
        return Decision(False, _wait_until(now, allow_at))

    def take(self, now: float) -> Decision:
        """Admit one event at ``now`` if it conforms, and account for it."""
        floor, ceil = _ns(now)
        tat = self._tat
        if tat is None or tat <= floor:  # rested: conforms, and tat moves from now
            self._tat = ceil + self._interval
            return _ALLOWED
        allow_at = tat - self._tolerance
        if floor >= allow_at:
            self._tat = tat + self._interval
            return _ALLOWED
        return Decision(False, _wait_until(now, allow_at))

    def reserve(self, now: float) -> float:
        """Book the next conforming slot and return how long to wait for it (0.0: now).

        For a caller that will sleep anyway: the booking is made before the sleep, so
        waking a little late does not push later slots back (``take`` after a sleep
        loses that lateness on every event and runs below the rate)."""
        floor, ceil = _ns(now)
        tat = self._tat
        if tat is None or tat <= floor:  # rested: conforms, and tat moves from now
            self._tat = ceil + self._interval
            return 0.0
        self._tat = tat + self._interval
        allow_at = tat - self._tolerance
        if floor >= allow_at:
            return 0.0
        return _wait_until(now, allow_at)

    def unreserve(self) -> None:
        """Give back the slot the last `reserve` booked, right after it (nothing booked or
        admitted since), for a caller that will not wait that long after all: the slot
        goes to the next caller, as if never booked."""
        if self._tat is not None:
            self._tat -= self._interval

    def is_idle(self, now: float) -> bool:
        """True when the full burst is available: the state may be dropped."""
        return self._tat is None or self._tat <= _ns(now)[0]

    def set_rate(self, rate: Rate, now: float, *, burst: int | None = None) -> None:
        """Switch to a new rate (a throttle, its end, a reload) at ``now``.

        The debt (how far ``tat`` runs ahead of ``now``) is kept in cells, not
        seconds: a bucket that had used 3 of its burst still has used 3 after
        the change, so neither a throttle nor its end hands out a fresh burst
        or a long stall. When slowing down, the next event also waits one new
        interval after the last admitted one: a throttle imposed because the
        receiver said "too fast" takes effect with the very next message.
        """
        old_interval = self._interval
        floor, _ = _ns(now)  # checked before anything changes
        self._configure(rate, self._burst if burst is None else burst)
        if self._tat is None:
            return
        debt = max(self._tat - floor, 0)
        tat = floor - (-debt * self._interval // old_interval)  # the debt in cells, rounded up
        if self._interval > old_interval:
            tat = max(tat, self._tat + self._interval - old_interval)
        self._tat = tat

    def __repr__(self) -> str:
        tat = None if self._tat is None else self._tat / _NS
        return f"Gcra(rate={self._rate}, burst={self._burst}, tat={tat})"


def message_burst(per_second: float) -> int:
    """50 ms worth back to back: enough to absorb timer jitter, too little to show as a
    burst at the receiver (20/s keeps a burst of 1: at most 20 in any second)."""
    return max(1, int(per_second / 20))
