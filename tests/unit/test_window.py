"""ConnectionWindow: additive increase, multiplicative decrease, never above the limit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shaper.window import ConnectionWindow


@pytest.mark.parametrize(
    ("limit", "start", "allowed"), [(10, 2, 2), (1, 2, 1), (5, 5, 5), (20, 5, 5), (3, 7, 3)]
)
def test_starting_window(limit: int, start: int, allowed: int) -> None:
    window = ConnectionWindow(limit, start)
    assert (window.limit, window.allowed, window.in_use) == (limit, allowed, 0)


def test_try_open_and_closed() -> None:
    window = ConnectionWindow(10)
    assert window.try_open() and window.try_open()
    assert not window.try_open()
    assert (window.in_use, window.available) == (2, 0)
    window.closed()
    assert window.available == 1
    assert window.try_open()


def test_closed_without_open_is_a_bug() -> None:
    with pytest.raises(RuntimeError):
        ConnectionWindow(3).closed()


def test_additive_increase_up_to_the_limit() -> None:
    window = ConnectionWindow(5, start=2)
    grown = []
    for _ in range(20):
        window.on_success()
        grown.append(window.allowed)
    # w -> w + 1 costs w successes: 2 at 2, 3 at 3, 4 at 4, then capped at 5.
    assert grown == [2, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5]


@pytest.mark.parametrize(("allowed", "after"), [(10, 5), (5, 2), (3, 1), (2, 1), (1, 1)])
def test_multiplicative_decrease(allowed: int, after: int) -> None:
    window = ConnectionWindow(allowed, start=allowed)
    window.on_pushback()
    assert window.allowed == after


def test_pushback_resets_the_success_streak() -> None:
    window = ConnectionWindow(10, start=4)
    for _ in range(3):
        window.on_success()
    window.on_pushback()  # 4 -> 2
    window.on_success()
    assert window.allowed == 2  # the three earlier successes do not count
    window.on_success()
    assert window.allowed == 3


def test_lowering_the_limit_leaves_open_connections_alone() -> None:
    window = ConnectionWindow(10, start=4)
    for _ in range(4):
        assert window.try_open()
    window.set_limit(1)
    assert (window.limit, window.allowed, window.in_use, window.excess) == (1, 1, 4, 3)
    assert not window.try_open()
    for _ in range(3):
        window.closed()
    assert window.excess == 0 and not window.try_open()
    window.closed()
    assert window.try_open()


def test_raising_the_limit_ramps_up_by_feedback() -> None:
    window = ConnectionWindow(1, start=2)
    window.set_limit(10)
    assert window.allowed == 1  # no wave when a throttle ends
    window.on_success()
    assert window.allowed == 2


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, None])
def test_bad_limits(bad: object) -> None:
    with pytest.raises(ValueError):
        ConnectionWindow(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ConnectionWindow(3, start=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ConnectionWindow(3).set_limit(bad)  # type: ignore[arg-type]


operations = st.lists(
    st.one_of(
        st.sampled_from(["open", "close", "success", "pushback"]),
        st.tuples(st.just("limit"), st.integers(min_value=1, max_value=12)),
    ),
    max_size=300,
)


@given(
    limit=st.integers(min_value=1, max_value=12),
    start=st.integers(min_value=1, max_value=12),
    ops=operations,
)
def test_in_use_never_above_the_limit(limit: int, start: int, ops: list[object]) -> None:
    window = ConnectionWindow(limit, start)
    fixed_limit = all(not isinstance(op, tuple) for op in ops)
    for op in ops:
        if op == "open":
            before = window.in_use
            opened = window.try_open()
            assert opened == (before < window.allowed)
            if opened:
                assert window.in_use <= window.allowed <= window.limit
        elif op == "close":
            if window.in_use:
                window.closed()
        elif op == "success":
            window.on_success()
        elif op == "pushback":
            window.on_pushback()
        else:
            window.set_limit(op[1])  # type: ignore[index]
        assert 1 <= window.allowed <= window.limit
        assert window.in_use >= 0
        assert window.available + window.in_use - window.excess == window.allowed
        if fixed_limit:
            assert window.in_use <= limit
