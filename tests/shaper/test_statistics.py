"""A destination's snapshot says why its mail waits, on plain times."""

import pytest

from shaper.admission import HAND
from shaper.statistics import Statistics, statistics
from shaper.units import Rate
from tests.shaper.test_destination import T0, Job, Made, jobs


def paused(made):
    made.core.suspend(T0, T0 + 600, "operator: mta pause")


def dead(made):
    made.core.dead(T0, "no host accepted a connection")


def ready(count, lane="bulk"):
    def queue(made):
        for job in jobs(lane, count):
            made.core.queue(job, T0)
    return queue


def connections_in_use(count):
    def open_(made):
        for _ in range(count):
            made.core.window.try_open()
    return open_


def single_about(made):
    assert made.core.admit(Job("s", "single"), T0) is HAND  # single mail came (and went to a worker)


def held_for_a_while(made):
    made.core.held.note(T0, 60)


@pytest.mark.parametrize("steps, waits", [
    ([], ""),
    ([held_for_a_while], "held"),
    ([ready(2)], "rate"),  # connections have room: its turn in the rate
    ([ready(2), connections_in_use(3)], "connections"),  # the window's 3 are in use
    ([single_about, ready(1), connections_in_use(2)], "connections"),  # bulk beside the single lane's reserve
    ([single_about, ready(1, "single"), connections_in_use(2)], "rate"),  # single mail may use it
    ([ready(2), paused], "paused"),
    ([ready(2), dead], "unreachable"),
])
def test_why_mail_waits(steps, waits):
    made = Made()
    for step in steps:
        step(made)
    assert made.core.statistics(T0).waits == waits


def test_the_snapshot_counts_what_is_where():
    made = Made()
    made.core.back_off(T0, T0 + 300, {"connection_limit": 2}, "pattern: too many")
    for job in jobs("bulk", 3) + jobs("single", 1):
        made.core.queue(job, T0)
    made.core.handed(Job("taken"))
    made.core.held.note(T0, 30)
    assert made.core.statistics(T0 + 1) == Statistics(
        mode="backoff", reason="pattern: too many", since=T0, until=T0 + 300, single=1, bulk=3, unpaced=1,
        held=1, per_second=100.0, connection_limit=2, connections_allowed=2, workers=0,
        unreachable_since=None, waits="rate", message_rate=Rate.parse("100/s"),
        connection_rate=Rate.parse("100/min"), deliveries_per_connection=100, throttled=True)
    assert made.core.statistics(T0 + 31).held == 0  # back from its delay queue


def test_what_the_shell_knows_joins_the_snapshot():
    made = Made()
    for job in jobs("bulk", 2) + jobs("single", 1):
        made.core.queue(job, T0)
    for _ in range(3):
        made.core.window.try_open()
    stats = statistics(made.core, T0, connections=2, idle=1, last_error="421 busy")
    assert (stats.queued, stats.workers, stats.in_flight, stats.connections, stats.last_error) == (
        3, 3, 2, 2, "421 busy")
    assert stats.active and not made.core.statistics(T0).throttled


@pytest.mark.parametrize("steps, active", [
    ([], False),
    ([held_for_a_while], False),  # only out in delay queues: counted by the metrics, not active
    ([ready(1)], True),
    ([connections_in_use(1)], True),
    ([paused], True),
])
def test_a_destination_is_active_with_anything_in_memory_or_not_normal(steps, active):
    made = Made()
    for step in steps:
        step(made)
    assert made.core.statistics(T0).active is active
