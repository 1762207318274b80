"""Gcra: an exact rate limiter; no admission ever beyond N + burst - 1 per period."""

from __future__ import annotations

import math
from bisect import bisect_left
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shaper.limiter import Decision, Gcra
from shaper.units import Rate

T0 = 1_700_000_000.0


def test_burst_then_spacing() -> None:
    limiter = Gcra(Rate.parse("60/min"), burst=3)
    assert [limiter.take(T0).allowed for _ in range(4)] == [True, True, True, False]
    assert limiter.check(T0) == Decision(False, 1.0)
    assert limiter.take(T0 + 0.5) == Decision(False, 0.5)
    assert limiter.take(T0 + 1.0) == Decision(True, 0.0)
    assert limiter.take(T0 + 1.0) == Decision(False, 1.0)
    assert limiter.take(T0 + 10.0).allowed
    assert limiter.take(T0 + 10.0).allowed  # 9 s idle earned the burst back...
    assert limiter.take(T0 + 10.0).allowed
    assert not limiter.take(T0 + 10.0).allowed  # ...but never more than the burst


def test_no_burst_means_even_spacing() -> None:
    limiter = Gcra(Rate.parse("100/s"))
    assert limiter.take(T0).allowed
    denied = limiter.take(T0)
    # 0.01 s, rounded up to what a float clock near T0 can tell apart
    assert not denied.allowed and denied.retry_after == pytest.approx(0.01, abs=1e-6)
    assert limiter.take(T0 + denied.retry_after).allowed


def test_check_does_not_consume() -> None:
    limiter = Gcra(Rate.parse("1/min"))
    for _ in range(5):
        assert limiter.check(T0).allowed
    assert limiter.take(T0).allowed
    assert limiter.check(T0) == Decision(False, 60.0)


def test_is_idle() -> None:
    limiter = Gcra(Rate.parse("1/min"), burst=2)
    assert limiter.is_idle(T0)
    limiter.take(T0)
    assert not limiter.is_idle(T0 + 59)
    assert limiter.is_idle(T0 + 60)


def test_clock_going_backwards_is_safe() -> None:
    limiter = Gcra(Rate.parse("1/s"))
    assert limiter.take(T0).allowed
    assert limiter.take(T0 - 5) == Decision(False, 6.0)


@pytest.mark.parametrize("burst", [0, -1, 1.5, True])
def test_bad_burst(burst: object) -> None:
    with pytest.raises(ValueError):
        Gcra(Rate.parse("1/s"), burst=burst)  # type: ignore[arg-type]


def test_bad_arguments() -> None:
    with pytest.raises(TypeError):
        Gcra("1/s")  # type: ignore[arg-type]
    limiter = Gcra(Rate.parse("1/s"))
    for now in (math.nan, math.inf):
        with pytest.raises(ValueError):
            limiter.take(now)


def test_throttle_takes_effect_with_the_next_message() -> None:
    limiter = Gcra(Rate.parse("100/s"))
    assert limiter.take(T0).allowed
    limiter.set_rate(Rate.parse("1/min"), T0 + 0.02)
    assert limiter.rate == Rate.parse("1/min")
    assert not limiter.check(T0 + 0.02).allowed
    assert not limiter.check(T0 + 59.9).allowed
    assert limiter.take(T0 + 60.0).allowed


def test_throttle_end_does_not_stall() -> None:
    limiter = Gcra(Rate.parse("1/min"), burst=5)
    for _ in range(5):
        assert limiter.take(T0).allowed  # the whole burst is used: 5 min of debt
    limiter.set_rate(Rate.parse("100/s"), T0 + 1)
    decision = limiter.check(T0 + 1)
    # The debt is kept in cells, so at 100/s it is worth a few milliseconds.
    assert not decision.allowed and decision.retry_after <= 0.01
    assert limiter.take(T0 + 1 + decision.retry_after).allowed


def test_set_rate_can_change_the_burst() -> None:
    limiter = Gcra(Rate.parse("1/s"))
    limiter.set_rate(Rate.parse("1/s"), T0, burst=3)
    assert limiter.burst == 3
    assert [limiter.take(T0).allowed for _ in range(4)] == [True, True, True, False]


def _max_in_window(times: list[Fraction], period: Fraction) -> int:
    """Most admissions in any half-open window [t, t + period); the busiest
    window can always be slid to start at an admission."""
    return max((bisect_left(times, t + period) - i for i, t in enumerate(times)), default=0)


def _drive(limiter: Gcra, steps: list[float | None], start: float) -> list[Fraction]:
    """Ask at each step; ``None`` waits exactly the last ``retry_after`` (the
    most adversarial caller), a number waits that long."""
    now, admitted, last = start, [], Decision(True, 0.0)
    for step in steps:
        now = now + (last.retry_after if step is None else step)
        last = limiter.take(now)
        if last.allowed:
            admitted.append(Fraction(now))
    return admitted


rates = st.builds(
    Rate,
    st.integers(min_value=1, max_value=50),
    st.one_of(st.sampled_from([1.0, 60.0, 3600.0]), st.floats(min_value=0.001, max_value=1e5)),
)
steps = st.lists(
    st.one_of(st.none(), st.just(0.0), st.floats(min_value=0, max_value=100)), max_size=300
)


@settings(deadline=None)
@given(
    rate=rates, burst=st.integers(min_value=1, max_value=8), steps=steps, start=st.floats(0, 2e9)
)
def test_never_more_than_n_plus_burst_minus_one_per_period(
    rate: Rate, burst: int, steps: list[float | None], start: float
) -> None:
    admitted = _drive(Gcra(rate, burst), steps, start)
    assert _max_in_window(admitted, Fraction(rate.period)) <= int(rate.count) + burst - 1


@settings(deadline=None)
@given(
    count=st.floats(min_value=0.01, max_value=50),
    period=st.floats(min_value=0.001, max_value=1e5),
    burst=st.integers(min_value=1, max_value=8),
    steps=steps,
)
def test_fractional_counts_are_bounded_too(
    count: float, period: float, burst: int, steps: list[float | None]
) -> None:
    rate = Rate(count, period)
    admitted = _drive(Gcra(rate, burst), steps, T0)
    # k admissions need (k - 1) * T < period + tau, so k < count + burst.
    assert _max_in_window(admitted, Fraction(period)) <= math.ceil(count + burst) - 1


@settings(deadline=None)
@given(rate=rates, burst=st.integers(min_value=1, max_value=8), steps=steps)
def test_waiting_retry_after_is_always_enough(
    rate: Rate, burst: int, steps: list[float | None]
) -> None:
    limiter, now = Gcra(rate, burst), T0
    for step in steps:
        now += step or 0.0
        decision = limiter.take(now)
        assert decision.retry_after >= 0.0
        if decision.allowed:
            assert decision.retry_after == 0.0
        else:
            # at most one interval, give or take the float resolution near now
            assert decision.retry_after <= rate.interval + 2 * math.ulp(now + rate.interval)
            assert limiter.check(now + decision.retry_after).allowed


@settings(deadline=None)
@given(
    old=rates,
    new=rates,
    burst=st.integers(min_value=1, max_value=5),
    before=steps,
    after=steps,
    pause=st.floats(min_value=0, max_value=100),
)
def test_after_set_rate_the_new_bound_holds(
    old: Rate,
    new: Rate,
    burst: int,
    before: list[float | None],
    after: list[float | None],
    pause: float,
) -> None:
    limiter = Gcra(old, burst)
    admitted_before = _drive(limiter, before, T0)
    switch = float(admitted_before[-1]) if admitted_before else T0
    switch += pause
    limiter.set_rate(new, switch)
    admitted = _drive(limiter, after, switch)
    assert _max_in_window(admitted, Fraction(new.period)) <= int(new.count) + burst - 1
    if admitted_before and admitted and burst == 1 and new.interval > old.interval:
        # slowing down: one new interval after the last admission, at least
        assert admitted[0] >= admitted_before[-1] + Fraction(new.period) / Fraction(
            new.count
        ) - Fraction(1, 10**6)


@settings(deadline=None)
@given(
    rate=rates, burst=st.integers(min_value=1, max_value=8),
    gaps=st.lists(st.floats(min_value=0, max_value=100), max_size=300), start=st.floats(0, 2e9),
)
def test_reserved_slots_never_exceed_n_plus_burst_minus_one_per_period(
    rate: Rate, burst: int, gaps: list[float], start: float
) -> None:
    limiter = Gcra(rate, burst=burst)
    now, slots = start, []
    for gap in gaps:
        now += gap
        wait = limiter.reserve(now)
        assert wait >= 0.0
        slots.append(Fraction(now) + Fraction(wait))
    slots.sort()
    # Each wait is rounded up to a float on its own, so two slots may sit a rounding
    # error (a few ulps of the clock's magnitude) closer than the grid they were booked
    # on: measure windows that much shorter.
    period = Fraction(rate.period) - 4 * Fraction(math.ulp(float(max(slots, default=0.0))))
    assert _max_in_window(slots, period) <= rate.count + burst - 1


def test_reserving_keeps_the_grid_when_the_caller_wakes_late() -> None:
    limiter = Gcra(Rate.parse("20/s"))
    now, slots = T0, []
    for _ in range(100):
        wait = limiter.reserve(now)
        slots.append(now + wait)
        now = now + wait + 0.004  # every wake-up 4 ms late
    assert slots[-1] - slots[0] == pytest.approx(99 / 20, abs=1e-6)


@settings(deadline=None)
@given(
    count=st.integers(min_value=1, max_value=50),
    period=st.floats(min_value=1e-9, max_value=1e-5),
    burst=st.integers(min_value=1, max_value=4),
    steps=st.lists(st.one_of(st.none(), st.floats(min_value=0, max_value=2e-9)), max_size=200),
    start=st.floats(0, 1e-3),
)
def test_the_bound_holds_below_a_nanosecond(
    count: int, period: float, burst: int, steps: list[float | None], start: float
) -> None:
    # The state is kept in whole nanoseconds: clocks and intervals finer than that must
    # still never let more than N + b - 1 through in any period.
    rate = Rate(count, period)
    admitted = _drive(Gcra(rate, burst), steps, start)
    assert _max_in_window(admitted, Fraction(period)) <= count + burst - 1
    limiter, now, slots = Gcra(rate, burst), start, []
    for step in steps:
        now += step or 0.0
        slots.append(Fraction(now) + Fraction(limiter.reserve(now)))
    slots.sort()
    window = Fraction(period) - 4 * Fraction(math.ulp(float(max(slots, default=0.0))))
    assert _max_in_window(slots, window) <= count + burst - 1


def test_unreserve_gives_the_slot_to_the_next_caller() -> None:
    limiter = Gcra(Rate.parse("1/min"))
    assert limiter.reserve(T0) == 0.0
    far = limiter.reserve(T0)
    assert far == pytest.approx(60.0)
    limiter.unreserve()  # not waited for after all
    assert limiter.check(T0).retry_after == pytest.approx(60.0)  # as if only the first was booked
    assert limiter.reserve(T0) == far
