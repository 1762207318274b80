"""RetrySchedule: when a deferred message is due again, and when it expires."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shaper.retry import (
    DEFAULT_INTERVALS,
    MAX_AGE,
    MAX_ATTEMPTS,
    RETRY,
    RETRY_AT_DEADLINE,
    RetryDecision,
    RetrySchedule,
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
        (12, 86400 - 100, 0, RetryDecision(True, 100.0, RETRY_AT_DEADLINE)),
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
    """Follow one message through failure after failure: each retry is later
    than the last, none is after the deadline, and it ends in one expiry."""
    schedule = RetrySchedule(intervals, max_age)
    deadline = first_seen + max_age
    now, attempts, due = first_seen, 0, first_seen
    durations = iter(attempt_time)
    # Every retry but the capped last one waits at least min(intervals).
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
        assert now < deadline
        assert 0 < decision.delay <= schedule.interval(attempts)
        assert now + decision.delay <= deadline
        assert now + decision.delay > due  # strictly later than the previous due time
        due = now + decision.delay
    else:
        pytest.fail("the message never expired")


@given(intervals=intervals_st, attempts=st.integers(min_value=1, max_value=100))
def test_waits_follow_the_list_then_repeat_the_last(
    intervals: tuple[float, ...], attempts: int
) -> None:
    schedule = RetrySchedule(intervals, math.inf)
    wait = schedule.decide(attempts, 0.0, 0.0).delay
    assert wait == intervals[min(attempts, len(intervals)) - 1]


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
