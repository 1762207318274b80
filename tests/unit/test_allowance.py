import pytest
from hypothesis import given, strategies as st

from shaper.allowance import HOLD_DELAYS, allowance, hold_delay


@pytest.mark.parametrize("per_second, connections, expected", [
    (100.0, 10, 1000),      # the default rules: 10 s of 100/s
    (20 / 60, 2, 8),        # 20/min: the per-connection floor wins
    (1000.0, 1, 10000),
    (0.0, 0, 4),
])
def test_allowance(per_second, connections, expected):
    assert allowance(per_second, connections) == expected


@pytest.mark.parametrize("queued, per_second, connections, expected", [
    (0, 1.0, 1, None),
    (9, 1.0, 1, None),        # allowance 10
    (10, 1.0, 1, 15),         # 10 s of backlog: the next delay that drains it
    (10, 2.0, 1, None),       # allowance 20: fits
    (25, 2.0, 1, 15),         # 12.5 s of backlog
    (200, 1.0, 1, 300),       # longer than the longest delay: capped
    (8, 20 / 60, 2, 30),      # 8 queued at 1/3 per s: 24 s
])
def test_hold_delay(queued, per_second, connections, expected):
    assert hold_delay(queued, per_second, connections) == expected


@given(st.integers(0, 10**6), st.floats(0, 10**5), st.integers(0, 1000))
def test_hold_is_a_known_delay_and_only_past_the_allowance(queued, per_second, connections):
    delay = hold_delay(queued, per_second, connections)
    if queued < allowance(per_second, connections):
        assert delay is None
    else:
        assert delay in HOLD_DELAYS
