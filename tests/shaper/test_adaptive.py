"""The adaptive message rate: finds a receiver's limit from its "too fast" replies and
climbs back in steps; a fake receiver with limit R stands in for the network."""

import pytest
from hypothesis import given, strategies as st

from shaper.adaptive import COOLDOWN, DECREASE, FLOOR, MIN_FACTOR, STEP_EVERY, AdaptiveRate


def test_starts_at_the_ceiling_and_not_adapting():
    rate = AdaptiveRate(100.0)
    assert rate.current == 100.0 and not rate.adapting


def test_a_rate_reply_drops_to_what_the_receiver_accepted():
    rate = AdaptiveRate(100.0)
    assert rate.on_rate_limited(0.0, accepted=90.0)
    assert rate.current == pytest.approx(90.0 * DECREASE)


def test_one_signal_never_cuts_below_a_quarter():
    rate = AdaptiveRate(100.0)
    rate.on_rate_limited(0.0, accepted=0.0)
    assert rate.current == pytest.approx(100.0 * MIN_FACTOR)


def test_replies_of_mail_already_in_flight_cause_one_decrease():
    rate = AdaptiveRate(100.0)
    rate.on_rate_limited(0.0, accepted=50.0)
    after_first = rate.current
    for t in (0.1, 0.5, COOLDOWN - 0.01):
        assert not rate.on_rate_limited(t, accepted=1.0)
    assert rate.current == after_first
    assert rate.on_rate_limited(COOLDOWN, accepted=10.0)
    assert rate.current < after_first


def test_climbs_back_in_steps_to_the_ceiling_then_stops_adapting():
    rate = AdaptiveRate(10.0)
    rate.on_rate_limited(0.0, accepted=5.0)
    t, seen = 0.0, [rate.current]
    assert not rate.tick(STEP_EVERY - 0.1)
    while rate.adapting:
        t += STEP_EVERY
        assert rate.tick(t)
        seen.append(rate.current)
        assert t < 1000
    assert seen == sorted(seen) and seen[-1] == 10.0
    assert len(seen) > 3, "the climb back must be gradual"


def test_floor_and_a_ceiling_below_it():
    rate = AdaptiveRate(100.0)
    for i in range(50):
        rate.on_rate_limited(i * COOLDOWN, accepted=0.0)
    assert rate.current == pytest.approx(FLOOR)
    slow = AdaptiveRate(1 / 3600)  # 1/h: below the floor, the ceiling still caps
    slow.on_rate_limited(0.0, accepted=0.0)
    assert slow.current <= 1 / 3600


def test_lowering_the_ceiling_caps_what_was_learned():
    rate = AdaptiveRate(100.0)
    rate.on_rate_limited(0.0, accepted=50.0)
    rate.set_ceiling(10.0)
    assert rate.current == 10.0 and not rate.adapting


def simulate(limit: float, ceiling: float, seconds: int) -> list[tuple[float, float, int]]:
    """A receiver that takes ``limit`` per second and answers the rest "rate limited";
    returns (time, accepted per second, refused) for each second."""
    rate = AdaptiveRate(ceiling)
    history = []
    for second in range(seconds):
        now = float(second)
        rate.tick(now)
        sent = rate.current
        accepted = min(sent, limit)
        refused = int(sent - accepted)
        if refused:
            rate.on_rate_limited(now + 0.5, accepted)
        history.append((now, accepted, refused))
    return history


@given(st.floats(1.0, 500.0), st.floats(1.0, 20.0))
def test_a_receiver_with_an_unknown_limit_is_held_near_it(limit, over):
    history = simulate(limit, ceiling=limit * over, seconds=300)
    steady = history[60:]
    mean = sum(a for _, a, _ in steady) / len(steady)
    assert mean >= 0.75 * limit
    refusing = sum(1 for *_, r in steady if r)
    assert refusing <= len(steady) / 4, "told 'too fast' on most seconds"


def test_a_rate_another_sender_learned_is_taken_only_when_lower_and_climbs_back() -> None:
    rate = AdaptiveRate(100.0)
    assert not rate.adopt(0.0, 150.0) and not rate.adapting  # higher than ours: nothing
    assert rate.adopt(0.0, 8.0) and rate.current == 8.0
    assert not rate.adopt(1.0, 9.0)  # not lower
    assert rate.tick(5.0) and rate.current > 8.0  # climbs back the same way
    floor = AdaptiveRate(10.0)
    assert floor.adopt(0.0, 0.0) and floor.current == FLOOR  # never below one a minute
