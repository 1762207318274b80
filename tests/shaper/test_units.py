"""Duration and Rate: the operators' spellings, parsed and printed back."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shaper.units import Duration, Rate


@pytest.mark.parametrize(
    ("raw", "seconds", "text"),
    [
        ("90m", 5400.0, "90m"),
        ("10s", 10.0, "10s"),
        ("1h", 3600.0, "1h"),
        ("2d", 172800.0, "2d"),
        ("5min", 300.0, "5m"),
        ("1.5s", 1.5, "1.5s"),
        ("500ms", 0.5, "500ms"),
        ("24h", 86400.0, "1d"),
        ("60s", 60.0, "1m"),
        (" 30 sec ", 30.0, "30s"),
        ("2 hours", 7200.0, "2h"),
        ("1H", 3600.0, "1h"),
        ("600", 600.0, "10m"),
        ("0s", 0.0, "0s"),
        (5400, 5400.0, "90m"),
        (3600, 3600.0, "1h"),
        (1.5, 1.5, "1.5s"),
        (0, 0.0, "0s"),
        (0.25, 0.25, "250ms"),
        (86401, 86401.0, "86401s"),
    ],
)
def test_duration_parse_and_str(raw: str | float, seconds: float, text: str) -> None:
    duration = Duration.parse(raw)
    assert duration.seconds == seconds
    assert str(duration) == text
    assert Duration.parse(str(duration)) == duration
    assert float(duration) == seconds


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("5x", "invalid duration '5x': unknown unit 'x'"),
        ("10 parsecs", "invalid duration '10 parsecs': unknown unit 'parsecs'"),
        ("-5s", "invalid duration '-5s': must not be negative"),
        (-1, "invalid duration -1: must not be negative"),
        ("", "invalid duration ''"),
        ("m", "invalid duration 'm'"),
        ("1h30m", "invalid duration '1h30m'"),
        ("nan", "invalid duration 'nan'"),
        (float("nan"), "invalid duration nan: must be a finite number"),
        (float("inf"), "invalid duration inf: must be a finite number"),
        ("1e999s", "invalid duration '1e999s': must be a finite number"),
        (True, "invalid duration True"),
        (None, "invalid duration None"),
        ([10], "invalid duration [10]"),
    ],
)
def test_duration_errors_name_the_input(raw: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        Duration.parse(raw)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message)


def test_duration_is_an_ordered_value() -> None:
    assert Duration.parse("90m") == Duration.parse(5400) == Duration(5400)
    assert Duration.parse("1m") < Duration.parse("1h")
    assert Duration.parse(Duration(3)) == Duration(3)
    with pytest.raises(ValueError):
        Duration(-1.0)
    with pytest.raises(AttributeError):
        Duration(1).seconds = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "count", "period", "text"),
    [
        ("100/min", 100.0, 60.0, "100/min"),
        ("100/s", 100.0, 1.0, "100/s"),
        ("6000/h", 6000.0, 3600.0, "6000/h"),
        ("1/d", 1.0, 86400.0, "1/d"),
        ("5/sec", 5.0, 1.0, "5/s"),
        ("3/hour", 3.0, 3600.0, "3/h"),
        ("7/day", 7.0, 86400.0, "7/d"),
        ("20/minute", 20.0, 60.0, "20/min"),
        ("20/m", 20.0, 60.0, "20/min"),
        (" 1 / min ", 1.0, 60.0, "1/min"),
        ("0.5/s", 0.5, 1.0, "0.5/s"),
        ("100/5min", 100.0, 300.0, "100/5m"),
    ],
)
def test_rate_parse_and_str(raw: str, count: float, period: float, text: str) -> None:
    rate = Rate.parse(raw)
    assert (rate.count, rate.period) == (count, period)
    assert rate.per_second == count / period
    assert rate.interval == period / count
    assert str(rate) == text
    assert Rate.parse(str(rate)) == rate


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("100/our", "invalid rate '100/our': unknown period 'our'"),
        ("100/5x", "invalid rate '100/5x': unknown period '5x'"),
        ("100/", "invalid rate '100/': unknown period ''"),
        ("100", "invalid rate '100': expected N/period"),
        ("x/s", "invalid rate 'x/s': count 'x' is not a number"),
        ("0/s", "invalid rate '0/s': count must be a positive"),
        ("-3/s", "invalid rate '-3/s': count must be a positive"),
        ("inf/s", "invalid rate 'inf/s': count must be a positive finite"),
        ("1/0s", "invalid rate '1/0s': the period must be longer than zero"),
        (100, "invalid rate 100"),
    ],
)
def test_rate_errors_name_the_input(raw: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        Rate.parse(raw)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message)


def test_rate_rejects_bad_fields() -> None:
    for count, period in ((0, 1), (1, 0), (-1, 1), (math.inf, 1), (1, math.nan), (True, 1)):
        with pytest.raises(ValueError):
            Rate(count, period)


finite_seconds = st.floats(min_value=0, max_value=1e300, allow_nan=False, allow_infinity=False)
whole_seconds = st.integers(min_value=0, max_value=10**12)


@given(st.one_of(finite_seconds, whole_seconds))
def test_duration_round_trips(seconds: float) -> None:
    duration = Duration.parse(seconds)
    assert Duration.parse(str(duration)) == duration


@given(whole_seconds)
def test_duration_prints_the_largest_exact_unit(seconds: int) -> None:
    text = str(Duration(seconds))
    value, unit = int(text[:-1]), text[-1]
    size = {"d": 86400, "h": 3600, "m": 60, "s": 1}[unit]
    assert value * size == seconds
    larger = [s for s in (86400, 3600, 60) if s > size]
    assert seconds == 0 or all(seconds % s for s in larger)


positive = st.floats(min_value=1e-6, max_value=1e12, allow_nan=False, allow_infinity=False)


@given(positive, st.one_of(st.sampled_from([1.0, 60.0, 3600.0, 86400.0]), positive))
def test_rate_round_trips(count: float, period: float) -> None:
    rate = Rate(count, period)
    assert Rate.parse(str(rate)) == rate
