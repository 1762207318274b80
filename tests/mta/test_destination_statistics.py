"""A destination's snapshot is its core's at the time of the destination's clock, its
times shown in wall-clock seconds while its limits and pauses run on monotonic time."""

from __future__ import annotations

from shaper.state import Mode
from tests.fakes import FakeClock
from tests.mta.test_forget_idle import destination

WALL = 1_700_000_000.0  # the wall clock, far from the monotonic one


def test_the_snapshot_is_taken_at_the_destination_s_time():
    clock = FakeClock(1000.0, wall=WALL)
    d = destination(clock)
    assert (d.statistics().mode, d.statistics().waits) == ("normal", "")
    d.suspend(WALL + 600, "operator: mta pause")
    d.held.note(clock.t, 60)
    stats = d.statistics()
    assert (stats.mode, stats.reason, stats.since, stats.until, stats.held, stats.waits) == (
        "paused", "operator: mta pause", WALL, WALL + 600, 1, "paused")
    assert (d.state.since, d.state.until) == (WALL, WALL + 600)  # what status and metrics show
    clock.advance(61)
    assert d.statistics().held == 0  # back from its delay queue by the clock's time


def test_setting_the_system_clock_neither_ends_a_pause_early_nor_makes_it_last():
    clock = FakeClock(1000.0, wall=WALL)
    d = destination(clock)
    d.suspend(WALL + 600, "operator: mta pause")
    clock.wall_offset += 3600  # the system clock jumps an hour ahead
    d.refresh()
    assert d.state.mode is Mode.PAUSED and d.state.until == WALL + 3600 + 600  # shown on the new wall time
    clock.advance(599)
    clock.wall_offset -= 7200  # ...and two hours back
    d.refresh()
    assert d.state.mode is Mode.PAUSED
    clock.advance(1)
    d.refresh()
    assert d.state.mode is Mode.NORMAL  # 600 s after it began, whatever the wall clock said
