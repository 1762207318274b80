"""RetrySchedule: when a deferred message is due again, and when it expires."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mta.ops.control import PAUSED_HOLD
from shaper.allowance import HOLD_DELAYS
from shaper.retry import (
    DEFAULT_INTERVALS,
    DELAY_LADDER,
    MAX_AGE,
    MAX_ATTEMPTS,
    RETRY,
    RETRY_AT_DEADLINE,
    RetryDecision,
    RetrySchedule,
    ladder_delay,
)

T0 = 1_700_000_000.0
MAILERQ = RetrySchedule(DEFAULT_INTERVALS, 86400.0)


@pytest.mark.parametrize(
    ("attempts", "elapsed", "max_attempts", "expected"),
    [
        (1, 0, 0, RetryDecision(True, 600.0, RETRY)),
        (2, 600, 0, RetryDecision(True, 600.0, RETRY)),
        (3, 1200, 0, RetryDecision(True, 1800.0, RETRY)),
        (5, 5000, 0, RetryDecision(True, 3600.0, RETRY)),
        (7, 10000, 0, RetryDecision(True, 7200.0, RETRY)),
        (8, 20000, 0, RetryDecision(True, 7200.0, RETRY)),  # the last repeats
        (50, 30000, 0, RetryDecision(True, 7200.0, RETRY)),
        (12, 86400 - 100, 0, RetryDecision(True, 120.0, RETRY_AT_DEADLINE)),  # a rung, past the deadline
        (12, 86400 - 7200, 0, RetryDecision(True, 7200.0, RETRY_AT_DEADLINE)),
        (12, 86400, 0, RetryDecision(False, 0.0, MAX_AGE)),
        (12, 90000, 0, RetryDecision(False, 0.0, MAX_AGE)),
        (3, 1200, 3, RetryDecision(False, 0.0, MAX_ATTEMPTS)),
        (4, 1200, 3, RetryDecision(False, 0.0, MAX_ATTEMPTS)),
        (2, 600, 3, RetryDecision(True, 600.0, RETRY)),
        (3, 90000, 3, RetryDecision(False, 0.0, MAX_ATTEMPTS)),  # attempts checked first
        (0, 0, 0, RetryDecision(True, 600.0, RETRY)),  # no attempt yet: first interval
    ],
)
def test_decide_table(
    attempts: int, elapsed: float, max_attempts: int, expected: RetryDecision
) -> None:
    got = MAILERQ.decide(attempts, T0, T0 + elapsed, max_attempts=max_attempts)
    assert got == expected


def test_parse_from_operator_spelling() -> None:
    schedule = RetrySchedule.parse(["10m", "10m", "30m", "30m", "1h", "1h", "2h"], "24h")
    assert schedule == MAILERQ
    assert RetrySchedule() == MAILERQ  # the defaults are MailerQ's


def test_intervals_are_normalised_to_a_float_tuple() -> None:
    schedule = RetrySchedule([60, 120], 3600)  # type: ignore[arg-type]
    assert schedule.intervals == (60.0, 120.0)
    assert schedule.max_age == 3600.0


@pytest.mark.parametrize(
    ("intervals", "max_age"),
    [
        ((), 3600),
        ((0,), 3600),
        ((60, -1), 3600),
        ((math.inf,), 3600),
        ((60,), 0),
        ((60,), -5),
        ((60,), math.nan),
    ],
)
def test_invalid_schedules(intervals: tuple[float, ...], max_age: float) -> None:
    with pytest.raises(ValueError):
        RetrySchedule(intervals, max_age)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        MAILERQ.decide(-1, T0, T0)
    with pytest.raises(ValueError):
        MAILERQ.decide(1, T0, T0, max_attempts=-1)


def test_unbounded_age_relies_on_attempts() -> None:
    schedule = RetrySchedule((60.0,), math.inf)
    assert schedule.decide(1000, T0, T0 + 1e9) == RetryDecision(True, 60.0, RETRY)
    assert schedule.decide(5, T0, T0 + 1e9, max_attempts=5).reason == MAX_ATTEMPTS


intervals_st = st.lists(st.floats(min_value=60, max_value=20000), min_size=1, max_size=8).map(tuple)


@given(
    intervals=intervals_st,
    max_age=st.floats(min_value=1, max_value=3 * 86400),
    first_seen=st.floats(min_value=1e9, max_value=2e9),
    attempt_time=st.lists(st.floats(min_value=0, max_value=600), max_size=400),
    max_attempts=st.integers(min_value=0, max_value=50),
)
def test_a_message_life_is_monotone_and_capped(
    intervals: tuple[float, ...],
    max_age: float,
    first_seen: float,
    attempt_time: list[float],
    max_attempts: int,
) -> None:
    """Follow one message through failure after failure: each wait is a rung, never
    shorter than asked (unless it reaches the deadline), the attempt at the deadline is
    the last one, and it ends in one expiry."""
    schedule = RetrySchedule(intervals, max_age)
    deadline = first_seen + max_age
    now, attempts, due = first_seen, 0, first_seen
    durations = iter(attempt_time)
    at_deadline = False
    for _ in range(math.ceil(max_age / min(intervals)) + 2):
        attempts += 1
        now = due + next(durations, 0.0)  # the attempt itself takes a while
        decision = schedule.decide(attempts, first_seen, now, max_attempts=max_attempts)
        if not decision.retry:
            assert decision.delay == 0.0
            assert decision.reason in (MAX_AGE, MAX_ATTEMPTS)
            if decision.reason == MAX_AGE:
                assert now >= deadline
            else:
                assert attempts >= max_attempts > 0
            break
        assert not at_deadline, "an attempt at the deadline must be the last"
        assert now < deadline
        assert decision.delay in DELAY_LADDER
        asked = schedule.interval(attempts)
        assert decision.delay <= ladder_delay(asked)  # never later than the interval's rung
        if decision.reason == RETRY:
            assert decision.delay >= min(asked, DELAY_LADDER[-1])  # never sooner than asked
            assert now + decision.delay < deadline
        else:
            assert decision.reason == RETRY_AT_DEADLINE
            assert now + decision.delay >= deadline
            at_deadline = True
        due = now + decision.delay
    else:
        pytest.fail("the message never expired")


@given(intervals=intervals_st, attempts=st.integers(min_value=1, max_value=100))
def test_waits_follow_the_list_then_repeat_the_last(
    intervals: tuple[float, ...], attempts: int
) -> None:
    schedule = RetrySchedule(intervals, math.inf)
    wait = schedule.decide(attempts, 0.0, 0.0).delay
    assert wait == ladder_delay(intervals[min(attempts, len(intervals)) - 1])


@given(
    intervals=st.lists(st.floats(min_value=1, max_value=20000), min_size=1, max_size=8).map(
        lambda xs: tuple(sorted(xs))
    ),
    attempts=st.integers(min_value=1, max_value=30),
)
def test_non_decreasing_intervals_give_non_decreasing_waits(
    intervals: tuple[float, ...], attempts: int
) -> None:
    schedule = RetrySchedule(intervals, math.inf)
    assert (
        schedule.decide(attempts + 1, 0.0, 0.0).delay >= schedule.decide(attempts, 0.0, 0.0).delay
    )


@pytest.mark.parametrize(("seconds", "rung"), [
    (0.001, 1), (1, 1), (1.2, 2), (3, 5), (7, 10), (59, 60), (61, 120), (400, 600),
    (1000, 1200), (2400, 3600), (5000, 7200), (10800, 14400), (86400, 86400),
    (86401, 172800), (172800, 172800), (10**7, 172800), (math.inf, 172800), (math.nan, 172800),
])
def test_ladder_rounds_up_and_caps_at_the_top(seconds: float, rung: int) -> None:
    assert ladder_delay(seconds) == rung


def test_the_ladder_is_increasing_and_every_ttl_fits_rabbitmq() -> None:
    assert list(DELAY_LADDER) == sorted(set(DELAY_LADDER))
    assert DELAY_LADDER[-1] * 1000 * 2 < 2**32 - 1  # with its x-expires lease on top


def test_default_intervals_and_hold_delays_are_rungs() -> None:
    """They wait exactly as long as they say, and share the same queues."""
    assert set(DEFAULT_INTERVALS) <= set(DELAY_LADDER)
    assert set(HOLD_DELAYS) <= set(DELAY_LADDER)
    assert PAUSED_HOLD in DELAY_LADDER


@given(st.lists(st.floats(min_value=0.001, max_value=1e7), min_size=1, max_size=10),
       st.floats(min_value=1, max_value=1e7), st.integers(1, 40), st.floats(0, 1e7))
def test_any_schedule_only_waits_on_rungs(intervals, max_age, attempts, elapsed) -> None:
    decision = RetrySchedule(tuple(intervals), max_age).decide(attempts, 0.0, elapsed)
    assert decision.delay in DELAY_LADDER or not decision.retry
