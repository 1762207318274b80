"""DestinationState: normal, backoff, paused; the legal moves and nothing else."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shaper.state import TRANSITIONS, DestinationState, Event, IllegalTransition, Mode, Transition

T0 = 1_700_000_000.0
N, B, P = Mode.NORMAL, Mode.BACKOFF, Mode.PAUSED


def test_starts_normal() -> None:
    state = DestinationState(T0)
    assert (state.mode, state.since, state.until, state.reason) == (N, T0, None, "")
    assert state.sending
    assert str(state.mode) == "normal"  # usable as a metric label as is


def test_backoff_then_expiry() -> None:
    state = DestinationState(T0)
    moved = state.backoff(T0 + 1, T0 + 5400, "421 rate limited")
    assert moved == Transition(T0 + 1, Event.BACKOFF, N, B, "421 rate limited")
    assert (state.mode, state.since, state.until) == (B, T0 + 1, T0 + 5400)
    assert state.sending
    assert state.tick(T0 + 5399) is None
    moved = state.tick(T0 + 5400)
    assert moved is not None and (moved.source, moved.target, moved.event) == (B, N, Event.EXPIRE)
    assert (state.mode, state.until) == (N, None)


def test_backoff_extends_never_shortens() -> None:
    state = DestinationState(T0)
    state.backoff(T0, T0 + 100, "first")
    assert state.backoff(T0 + 10, T0 + 50, "shorter") is None
    assert (state.until, state.reason) == (T0 + 100, "first")
    moved = state.backoff(T0 + 20, T0 + 200, "longer")
    assert moved is not None and (moved.source, moved.target) == (B, B)
    assert (state.since, state.until, state.reason) == (T0, T0 + 200, "longer")


def test_an_expired_backoff_is_replaced_not_extended() -> None:
    state = DestinationState(T0)
    state.backoff(T0, T0 + 100, "old")
    state.backoff(T0 + 500, T0 + 600, "new")
    assert (state.mode, state.since, state.until, state.reason) == (B, T0 + 500, T0 + 600, "new")


def test_success_does_not_lift_a_throttle_by_default() -> None:
    state = DestinationState(T0)
    state.backoff(T0, T0 + 100, "too fast")
    assert state.on_success(T0 + 1) is None
    assert state.mode is B and state.last_success == T0 + 1


def test_success_lifts_a_clear_on_success_backoff() -> None:
    state = DestinationState(T0)
    state.backoff(T0, T0 + 300, "all MX unreachable", clear_on_success=True)
    moved = state.on_success(T0 + 1)
    assert moved is not None and (moved.source, moved.target, moved.event) == (B, N, Event.SUCCESS)


def test_operator_pause_and_resume() -> None:
    state = DestinationState(T0)
    moved = state.pause(T0 + 1, None, "operator")
    assert moved == Transition(T0 + 1, Event.PAUSE, N, P, "operator")
    assert not state.sending
    assert state.tick(T0 + 10**9) is None  # no end: only resume ends it
    moved = state.resume(T0 + 60, "operator")
    assert (moved.source, moved.target, state.mode, state.until) == (P, N, N, None)


def test_timed_pause_ends_by_itself() -> None:
    state = DestinationState(T0)
    state.pause(T0, T0 + 7200, "TSS04")
    assert state.tick(T0 + 7199) is None
    moved = state.tick(T0 + 7200)
    assert moved is not None and moved.target is N and moved.event is Event.EXPIRE


def test_pause_extends_never_shortens() -> None:
    state = DestinationState(T0)
    state.pause(T0, T0 + 100, "suspend")
    assert state.pause(T0, T0 + 50, "shorter") is None
    assert state.pause(T0, None, "operator") is not None
    assert (state.until, state.reason) == (None, "operator")
    assert state.pause(T0, T0 + 10**6, "automatic") is None  # an endless pause stays endless


def test_a_pause_remembers_the_backoff_it_interrupts() -> None:
    state = DestinationState(T0)
    state.backoff(T0, T0 + 5400, "throttle")
    state.pause(T0 + 10, T0 + 60, "suspend")
    assert (state.mode, state.until) == (P, T0 + 60)
    moved = state.tick(T0 + 60)
    assert moved is not None and moved.target is B
    assert (state.mode, state.until, state.reason) == (B, T0 + 5400, "throttle")


def test_a_backoff_during_a_pause_waits_for_the_pause_to_end() -> None:
    state = DestinationState(T0)
    state.pause(T0, None, "operator")
    moved = state.backoff(T0 + 1, T0 + 100, "late 421")
    assert moved is not None and (moved.source, moved.target, moved.reason) == (P, P, "late 421")
    assert (state.mode, state.until, state.reason) == (P, None, "operator")
    assert state.resume(T0 + 50, "operator").target is B
    assert state.until == T0 + 100


def test_a_remembered_backoff_that_ran_out_is_dropped() -> None:
    state = DestinationState(T0)
    state.backoff(T0, T0 + 100, "throttle")
    state.pause(T0 + 1, None, "operator")
    assert state.resume(T0 + 500, "operator").target is N


def test_a_call_reports_the_expiry_it_made_on_the_way() -> None:
    state = DestinationState(T0)
    state.backoff(T0, T0 + 1000, "throttle")
    state.pause(T0, T0 + 10, "suspend")
    # The engine did not tick; the pause is over and the longer backoff is back.
    moved = state.backoff(T0 + 50, T0 + 60, "shorter")
    assert moved is not None and (moved.event, moved.source, moved.target) == (Event.EXPIRE, P, B)
    assert (state.mode, state.since, state.until, state.reason) == (
        B,
        T0 + 50,
        T0 + 1000,
        "throttle",
    )
    state.pause(T0 + 60, T0 + 70, "suspend")
    moved = state.pause(T0 + 2000, None, "operator")
    assert moved is not None and (moved.source, moved.target) == (N, P)


def test_resume_lifts_a_backoff() -> None:
    state = DestinationState(T0)
    state.backoff(T0, T0 + 100, "throttle")
    assert state.resume(T0 + 1, "operator").target is N


def test_resume_with_nothing_to_resume_is_illegal() -> None:
    with pytest.raises(IllegalTransition) as caught:
        DestinationState(T0).resume(T0, "operator")
    assert (caught.value.mode, caught.value.event) == (N, Event.RESUME)
    assert "resume while normal" in str(caught.value)


def test_ends_must_be_in_the_future() -> None:
    state = DestinationState(T0)
    with pytest.raises(ValueError):
        state.backoff(T0, T0, "x")
    with pytest.raises(ValueError):
        state.pause(T0, T0 - 1, "x")


def test_the_table_only_names_real_modes_and_events() -> None:
    for (mode, event), targets in TRANSITIONS.items():
        assert isinstance(mode, Mode) and isinstance(event, Event)
        assert targets and all(isinstance(t, Mode) for t in targets)
    assert (N, Event.RESUME) not in TRANSITIONS


actions = st.lists(
    st.tuples(
        st.sampled_from(
            ["backoff", "backoff_clear", "pause", "pause_forever", "resume", "tick", "success"]
        ),
        st.floats(min_value=0, max_value=500),  # time passing before the action
        st.floats(min_value=1, max_value=1000),  # how long a backoff or pause lasts
    ),
    max_size=100,
)


@settings(max_examples=300)
@given(actions)
def test_every_move_is_in_the_table_and_the_state_stays_coherent(
    steps: list[tuple[str, float, float]],
) -> None:
    state, now = DestinationState(T0), T0
    for action, elapsed, length in steps:
        now += elapsed
        before = (state.mode, state.since, state.until, state.reason)
        try:
            if action.startswith("backoff"):
                moved = state.backoff(
                    now, now + length, action, clear_on_success=action == "backoff_clear"
                )
            elif action == "pause":
                moved = state.pause(now, now + length, action)
            elif action == "pause_forever":
                moved = state.pause(now, None, action)
            elif action == "resume":
                moved = state.resume(now, action)
            elif action == "tick":
                moved = state.tick(now)
                assert state.until is None or state.until > now  # nothing overdue remains
            else:
                moved = state.on_success(now)
        except IllegalTransition:
            assert action == "resume" and before[0] is N
            assert state.mode is N
            continue
        if moved is not None:
            assert moved.target in TRANSITIONS[(moved.source, moved.event)]
            assert moved.target is state.mode and moved.at == now
        else:  # None promises that nothing changed
            assert (state.mode, state.since, state.until, state.reason) == before
        # normal has no end; backoff always has one; a pause may have none
        assert (state.until is None) if state.mode is N else True
        if state.mode is B:
            assert state.until is not None
        assert state.since <= now
        assert state.sending == (state.mode is not P)
