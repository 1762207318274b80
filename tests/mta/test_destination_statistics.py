"""A destination's snapshot is its core's at the time of the destination's clock."""

from __future__ import annotations

from tests.fakes import FakeClock
from tests.mta.test_forget_idle import destination


def test_the_snapshot_is_taken_at_the_destination_s_time():
    clock = FakeClock(1000.0)
    d = destination(clock)
    assert (d.statistics().mode, d.statistics().waits) == ("normal", "")
    d.suspend(clock.t, clock.t + 600, "operator: mta pause")
    d.held.note(clock.t, 60)
    stats = d.statistics()
    assert (stats.mode, stats.reason, stats.until, stats.held, stats.waits) == (
        "paused", "operator: mta pause", 1600.0, 1, "paused")
    clock.advance(61)
    assert d.statistics().held == 0  # back from its delay queue by the clock's time
