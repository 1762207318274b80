import pytest
from hypothesis import given, strategies as st

from shaper.allowance import HOLD_DELAYS, allowance, hold_delay


@pytest.mark.parametrize("per_second, connections, expected", [
    (100.0, 10, 1000),      # the default rules: 10 s of 100/s
    (20 / 60, 2, 5),        # 20/min: four per connection would wait too long; 15 s worth
    (1000.0, 1, 10000),
    (0.0, 0, 1),             # no rate at all: still one at a time
    (1 / 60, 10, 1),         # 1/min: 40 would wait 40 min; one, sent within 30 s at most
])
def test_allowance(per_second, connections, expected):
    assert allowance(per_second, connections) == expected


@pytest.mark.parametrize("queued, per_second, connections, expected", [
    (0, 1.0, 1, None),
    (9, 1.0, 1, None),        # allowance 10
    (10, 1.0, 1, 5),          # 10 s of backlog: back (at the latest) before it has drained
    (10, 2.0, 1, None),       # allowance 20: fits
    (35, 2.0, 1, 15),         # 17.5 s of backlog
    (2000, 1.0, 1, 1200),     # longer than the longest delay: capped
    (8, 20 / 60, 2, 15),      # 8 queued at 1/3 per s: 24 s
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


def test_a_backlog_held_earlier_pushes_later_mail_further_out():
    from shaper.allowance import HeldLedger
    ledger = HeldLedger()
    first = hold_delay(20, 1.0, 1, ledger.ahead(0.0))
    for _ in range(100):
        ledger.note(0.0, first)
    later = hold_delay(20, 1.0, 1, ledger.ahead(0.0))
    assert first == 15 and later == 60


def test_the_ledger_forgets_mail_whose_delay_has_passed():
    from shaper.allowance import HeldLedger
    ledger = HeldLedger()
    ledger.note(0.0, 15)
    ledger.note(0.0, 300)
    assert ledger.ahead(1.0) == 2
    assert ledger.ahead(30.0) == 1
    assert ledger.ahead(400.0) == 0


def test_counting_the_ledger_changes_nothing():
    from shaper.allowance import HeldLedger
    ledger = HeldLedger()
    ledger.note(0.0, 15)
    ledger.note(0.0, 300)
    assert [ledger.counted(t) for t in (1.0, 30.0, 400.0)] == [2, 1, 0]
    assert ledger.counted(1.0) == 2  # nothing was forgotten by counting
    assert [ledger.ahead(t) for t in (1.0, 30.0, 400.0)] == [2, 1, 0]


@pytest.mark.parametrize("remaining, paused_for, per_second, held, expected", [
    (10.0, 0.0, 1.0, 0, 15),        # comes back when the pause is over
    (10.0, 0.0, 1.0, 100, 60),      # and spread behind the mail held before it
    (None, 0.0, 1.0, 0, 15),        # open-ended: looked at again soon
    (None, 3600.0, 1.0, 0, 300),    # an hour-long pause: every five minutes
])
def test_paused_delay(remaining, paused_for, per_second, held, expected):
    from shaper.allowance import paused_delay
    assert paused_delay(remaining, paused_for, per_second, held) == expected


@pytest.mark.parametrize("next_slot, queued, per_second, expected", [
    (0.0, 0, 1 / 60, None),       # the rate allows one now: it may wait in memory
    (10.0, 0, 1 / 60, None),      # its slot comes within MAX_WAIT
    (20.0, 0, 1 / 60, 15),        # not quite: held, back a little before its slot
    (50.0, 0, 1 / 60, 30),        # 50 s away: held, back a little before its slot
    (0.0, 1, 1 / 60, 30),         # one queued ahead of it: 60 s
    (0.0, 5, 1 / 60, 120),        # five: five minutes out, spread over the delays
])
def test_a_slow_destination_keeps_no_message_waiting_long(next_slot, queued, per_second, expected):
    from shaper.allowance import slow_hold
    assert slow_hold(next_slot, queued, per_second) == expected


def test_held_mail_comes_back_when_its_age_ends_if_that_is_sooner():
    from shaper.allowance import HOLD_DELAYS, within_age
    assert within_age(300, 8.0) == 15       # expires in 8 s: back after the first delay past it
    assert within_age(300, 0.0) == HOLD_DELAYS[0]
    assert within_age(30, 3600.0) == 30     # far from its age: the delay stands
    assert within_age(5, 2.0) == 5
    for delay in HOLD_DELAYS:
        for remaining in (0.5, 5, 14.9, 15, 16, 100, 5000):
            got = within_age(delay, remaining)
            assert got in HOLD_DELAYS and got <= delay
            assert got >= min(delay, remaining) or got == HOLD_DELAYS[-1]


@pytest.mark.parametrize("next_slot, queued, per_second, connections, fits", [
    (0.0, 0, 1.0, 10, True),
    (0.0, 14, 1.0, 10, True),       # the provider's allowance at 1/s: 15, all sent within 15 s
    (0.0, 15, 1.0, 10, False),      # what 20 domains of their own would keep is not the share's
    (10.0, 5, 1.0, 10, True),       # 10 s of slots booked, then 5: sent within MAX_WAIT
    (10.0, 6, 1.0, 10, False),
    (0.2, 499, 50.0, 10, True),     # 10 s of 50/s
    (0.2, 500, 50.0, 10, False),
    (20.0, 0, 1.0, 10, False),      # booked beyond MAX_WAIT already
    (0.0, 0, 0.0, 10, False),       # no rate: nothing waits in memory for it
])
def test_shared_fits(next_slot, queued, per_second, connections, fits):
    from shaper.allowance import shared_fits
    assert shared_fits(next_slot, queued, per_second, connections) is fits


@pytest.mark.parametrize("next_slot, queued, per_second, held, expected", [
    (0.0, 15, 1.0, 0, 5),       # 15 s of backlog: back before it has drained
    (10.0, 15, 1.0, 0, 15),     # 25 s
    (0.0, 300, 1.0, 0, 120),    # 5 min
    (0.0, 300, 1.0, 1000, 1200),
    (60.0, 0, 1 / 60, 0, 30),   # a slot a minute away
    (0.0, 10, 0.0, 0, 1200),    # no rate: the longest delay
])
def test_shared_hold(next_slot, queued, per_second, held, expected):
    from shaper.allowance import shared_hold
    assert shared_hold(next_slot, queued, per_second, held) == expected
