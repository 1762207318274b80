"""ConnectionBudget: the process-wide cap on SMTP connections, its line and its reserve."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shaper.budget import FD_RESERVE_MIN, UNLIMITED_FDS_BUDGET, ConnectionBudget, budget_limit, fd_reserve, single_reserve


@pytest.mark.parametrize(("nofile", "reserve"), [
    (100, 50), (256, 128), (512, 128), (1024, 128), (1280, 128), (4096, 409), (1_048_576, 104_857),
])
def test_fd_reserve(nofile: int, reserve: int) -> None:
    assert fd_reserve(nofile) == reserve


def test_fd_reserve_grows_with_the_dkim_pool() -> None:
    assert fd_reserve(1024, dkim_workers=16) == 160
    assert budget_limit(1024, None, dkim_workers=16) == (864, None)


@pytest.mark.parametrize(("nofile", "configured", "limit", "clamped"), [
    (1024, None, 896, False),  # derived from the descriptor limit
    (1024, 500, 500, False),  # the operator's number, within the limit
    (1024, 896, 896, False),
    (1024, 5000, 896, True),  # more than the limit allows: clamped, with a warning
    (256, None, 128, False),
    (2, None, 1, False),  # a tiny limit still leaves one connection
    (None, None, UNLIMITED_FDS_BUDGET, False),  # no descriptor limit at all
    (None, 7, 7, False),
])
def test_budget_limit(nofile, configured, limit, clamped) -> None:
    got, warning = budget_limit(nofile, configured)
    assert got == limit
    assert (warning is not None) == clamped
    if clamped:
        assert str(configured) in warning and str(limit) in warning


@pytest.mark.parametrize(("limit", "reserve"), [(1, 0), (2, 1), (49, 1), (100, 2), (384, 7), (896, 17)])
def test_single_reserve(limit: int, reserve: int) -> None:
    assert single_reserve(limit) == reserve


def test_min_fd_reserve_covers_the_dns_queries() -> None:
    from mta.routing.mx import MAX_QUERIES

    assert FD_RESERVE_MIN >= MAX_QUERIES + 32


def test_slots_up_to_the_limit_then_a_line() -> None:
    budget = ConnectionBudget(3, reserve=0)
    assert all(budget.try_acquire(k) for k in "abc")
    assert not budget.try_acquire("d")
    budget.wait("d")
    assert budget.grant() is None  # no room
    budget.release("a")
    assert budget.grant() == "d"
    assert (budget.in_use, budget.waiting, budget.held("d"), budget.held("a")) == (3, 0, 1, 0)


def test_a_newcomer_does_not_overtake_the_line() -> None:
    budget = ConnectionBudget(2, reserve=0)
    assert budget.try_acquire("a") and budget.try_acquire("b")
    budget.wait("c")
    budget.release("a")  # the shell grants at once on release; before it does, nobody jumps in
    assert not budget.try_acquire("e")
    assert budget.grant() == "c"


def test_a_key_waits_once() -> None:
    budget = ConnectionBudget(1, reserve=0)
    assert budget.try_acquire("a")
    budget.wait("b")
    budget.wait("b")
    assert budget.waiting == 1
    budget.release("a")
    assert budget.grant() == "b"
    assert budget.grant() is None


def test_destinations_without_a_connection_go_first_then_first_come() -> None:
    budget = ConnectionBudget(4, reserve=0)
    for key in ("busy", "busy", "busy", "other"):
        assert budget.try_acquire(key)
    budget.wait("busy")  # has three already
    budget.wait("other")  # has one
    budget.wait("new1")  # has none
    budget.wait("new2")
    order = []
    for key in ("busy", "busy", "busy", "other"):
        budget.release(key)
        order.append(budget.grant())
    assert order == ["new1", "new2", "busy", "other"]


def test_a_waiter_whose_last_connection_closed_moves_up_keeping_its_turn() -> None:
    budget = ConnectionBudget(2, reserve=0)
    assert budget.try_acquire("a") and budget.try_acquire("b")
    budget.wait("a")  # holds one: waits behind destinations holding none
    budget.wait("c")
    budget.wait("d")
    budget.release("a")  # now "a" holds none; it came before c and d
    assert budget.grant() == "a"
    budget.release("b")
    assert budget.grant() == "c"


def test_single_mail_goes_first_and_has_a_reserve() -> None:
    budget = ConnectionBudget(5, reserve=2)
    assert all(budget.try_acquire(k) for k in "abc")
    assert not budget.try_acquire("d")  # bulk stops where the single lane's reserve begins
    assert budget.try_acquire("s1", single=True)
    assert budget.try_acquire("s2", single=True)
    assert not budget.try_acquire("s3", single=True)  # full
    budget.wait("d")
    budget.wait("s3", single=True)
    budget.release("a")
    assert budget.grant() == "s3"  # single first, even though d waited longer
    for key in ("b", "c"):
        budget.release(key)
        assert budget.grant() is None  # 4, then 3 in use: bulk waits outside the reserve
    budget.release("s1")
    assert budget.grant() == "d"


def test_single_mail_moves_a_waiting_destination_up() -> None:
    budget = ConnectionBudget(1, reserve=0)
    assert budget.try_acquire("x")
    budget.wait("a")
    budget.wait("b")
    budget.wait("b", single=True)
    budget.release("x")
    assert budget.grant() == "b"


@pytest.mark.parametrize(("limit", "reserve", "held", "singles", "bulk", "shortfall"), [
    (10, 0, 10, 0, 3, 3),  # full: one idle connection per waiter
    (10, 0, 8, 0, 3, 1),  # two free slots
    (10, 2, 8, 0, 1, 1),  # bulk needs room outside the single lane's reserve
    (10, 2, 8, 1, 0, 0),  # single mail may use the reserve
    (10, 2, 10, 2, 0, 2),
    (10, 2, 9, 1, 1, 2),  # single takes the last slot; bulk needs in_use below 8
    (10, 0, 3, 0, 0, 0),
])
def test_shortfall(limit, reserve, held, singles, bulk, shortfall) -> None:
    budget = ConnectionBudget(limit, reserve=reserve)
    for i in range(held):
        budget._take(f"h{i}")
    for i in range(singles):
        budget.wait(f"s{i}", single=True)
    for i in range(bulk):
        budget.wait(f"b{i}")
    assert budget.shortfall() == shortfall


def test_connections_being_closed_count_against_the_shortfall() -> None:
    budget = ConnectionBudget(2, reserve=0)
    assert budget.try_acquire("a") and budget.try_acquire("b")
    budget.wait("c")
    budget.wait("d")
    assert budget.shortfall() == 2
    budget.closing_idle("a")
    assert (budget.shortfall(), budget.closing) == (1, 1)
    budget.release("a")  # the idle connection closed
    assert (budget.shortfall(), budget.closing) == (1, 0)
    assert budget.grant() == "c"


def test_should_yield_only_with_others_holding_nothing_waiting() -> None:
    budget = ConnectionBudget(3, reserve=0)
    assert budget.try_acquire("busy") and budget.try_acquire("busy") and budget.try_acquire("one")
    assert not budget.should_yield("busy")  # nobody waits
    budget.wait("one")  # waits, but already has a connection
    assert not budget.should_yield("busy")
    budget.wait("new")
    assert budget.should_yield("busy")
    assert not budget.should_yield("one")  # its only connection: never given up


def test_release_without_a_slot_is_a_bug() -> None:
    budget = ConnectionBudget(2)
    with pytest.raises(RuntimeError):
        budget.release("a")


def test_invalid_limit() -> None:
    with pytest.raises(ValueError):
        ConnectionBudget(0)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 8), st.integers(0, 3),
       st.lists(st.tuples(st.sampled_from(["acquire", "wait", "release", "grant"]),
                          st.sampled_from("abcdef"), st.booleans()), max_size=80))
def test_never_over_the_limit_and_bulk_never_into_the_reserve(limit, reserve, ops) -> None:
    budget = ConnectionBudget(limit, reserve=reserve)
    held: dict[str, int] = {}
    for op, key, single in ops:
        before = budget.in_use
        if op == "acquire":
            if budget.try_acquire(key, single):
                held[key] = held.get(key, 0) + 1
                assert single or before < limit - budget.reserve
        elif op == "wait":
            budget.wait(key, single)
        elif op == "release" and held.get(key):
            budget.release(key)
            held[key] -= 1
        elif op == "grant":
            granted = budget.grant()
            if granted is not None:
                held[granted] = held.get(granted, 0) + 1
                assert not budget.is_waiting(granted)
        assert 0 <= budget.in_use <= limit
        assert budget.in_use == sum(held.values())
        assert all(budget.held(k) == n for k, n in held.items())
        assert budget.shortfall() >= 0
    # Whoever waits is served once enough slots come back.
    for key, n in list(held.items()):
        for _ in range(n):
            budget.release(key)
    served = set()
    while (granted := budget.grant()) is not None:
        served.add(granted)
        budget.release(granted)
    assert budget.waiting == 0


@pytest.mark.parametrize(("value", "problem"), [
    (None, None), (500, None), (0, "smtp.max_connections: 0 is out of range"),
    ("many", "smtp.max_connections: expected a whole number"),
])
def test_config_key(value, problem) -> None:
    from mta.config import ConfigError, parse_config

    if problem is None:
        assert parse_config({"smtp": {"max_connections": value}}).smtp.max_connections == value
    else:
        with pytest.raises(ConfigError) as caught:
            parse_config({"smtp": {"max_connections": value}})
        assert caught.value.problems[0].startswith(problem)


def test_start_raises_the_soft_fd_limit_and_clamps_an_impossible_budget(caplog) -> None:
    import logging
    import os
    import resource

    from mta.destinations.budget import Budget

    with caplog.at_level(logging.INFO, logger="mta.budget"):
        budget = Budget.from_config(10_000_000)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == hard
    if soft != resource.RLIM_INFINITY:
        assert budget.limit == soft - fd_reserve(soft, max(1, os.cpu_count() or 1))
        assert "smtp.max_connections 10000000 is more than" in caplog.text
    assert f"connection budget: {budget.limit} SMTP connections" in caplog.text
