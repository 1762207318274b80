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


def test_too_many_connections_keeps_one_fewer_and_remembers():
    w = ConnectionWindow(10, start=4)
    for _ in range(4):
        assert w.try_open()
    w.on_too_many()  # the 4th was refused: the receiver takes 3
    assert w.allowed == 3 and w.learned == 3
    w.closed()
    for _ in range(3):  # three successes would have grown it; at the learned level they do not
        w.on_success()
    assert w.allowed == 3


def test_growing_past_the_learned_level_waits_relearn_after():
    from shaper.window import RELEARN_AFTER
    w = ConnectionWindow(10, start=4)
    for _ in range(4):
        w.try_open()
    w.on_too_many(now=100.0)
    assert w.allowed == 3
    for i in range(1000):  # however fast the mail flows
        w.on_success(now=100.0 + i * (RELEARN_AFTER - 1) / 1000)
    assert w.allowed == 3
    for _ in range(3):
        w.on_success(now=100.0 + RELEARN_AFTER)
    assert w.allowed == 4


def test_collapse_leaves_one_probe_connection():
    w = ConnectionWindow(10, start=8)
    w.collapse()
    assert w.allowed == 1
    assert w.try_open() and not w.try_open()


@given(st.lists(st.sampled_from(["open", "close", "ok", "push", "many", "collapse", "limit"]), max_size=200),
       st.integers(1, 20))
def test_in_use_never_exceeds_the_window_through_new_opens(ops, limit):
    w = ConnectionWindow(limit)
    for op in ops:
        if op == "open":
            before = w.in_use
            if w.try_open():
                assert before < w.allowed <= w.limit
        elif op == "close" and w.in_use:
            w.closed()
        elif op == "ok":
            w.on_success()
        elif op == "push":
            w.on_pushback()
        elif op == "many":
            w.on_too_many()
        elif op == "collapse":
            w.collapse()
        elif op == "limit":
            w.set_limit(max(1, limit // 2))
        assert 1 <= w.allowed <= w.limit
