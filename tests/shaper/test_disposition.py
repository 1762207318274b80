"""What becomes of a message after an attempt or a hold (shaper.disposition), on a table."""

from __future__ import annotations

import pytest

from shaper.disposition import Bounced, Deferred, Delivered, Expired, after_attempt, after_hold
from shaper.retry import RetrySchedule

SCHEDULE = RetrySchedule((600.0, 1800.0), 86400.0)


def attempt(code, text="", *, enhanced=None, accepted=False, attempts=1, age=0.0, max_attempts=0,
            permanent=None, verdict=None):
    return after_attempt(code, enhanced, text, accepted=accepted, schedule=SCHEDULE, attempts=attempts,
                         first_seen=1000.0, now=1000.0 + age, max_attempts=max_attempts,
                         permanent=permanent, verdict=verdict)


@pytest.mark.parametrize("kwargs, expected", [
    (dict(code=250, accepted=True), Delivered()),
    (dict(code=550, text="5.1.1 no such user", enhanced="5.1.1"), Bounced("hard")),
    (dict(code=552, text="5.3.4 message too big", enhanced="5.3.4"), Bounced("soft")),
    (dict(code=451, text="4.3.0 try later"), Deferred(600.0)),
    (dict(code=None, text="connection refused"), Deferred(600.0)),
    (dict(code=451, text="4.3.0 try later", attempts=2), Deferred(1800.0)),
    (dict(code=451, text="4.3.0 try later", attempts=3), Deferred(1800.0)),  # the last interval repeats
    (dict(code=451, text="4.3.0 try later", attempts=3, max_attempts=3), Expired()),
    (dict(code=451, text="4.3.0 try later", age=86400.0), Expired()),
    (dict(code=451, text="4.3.0 try later", age=86400.0 - 100), Deferred(120.0)),  # one last try at the deadline
    (dict(code=550, text="5.1.1 no such user", enhanced="5.1.1", verdict=False), Deferred(600.0)),
    (dict(code=451, text="4.3.0 greylisted", verdict=True), Bounced("soft")),
    (dict(code=550, text="5.1.1 no such user", enhanced="5.1.1", verdict=True), Bounced("hard")),
    (dict(code=None, text="NXDOMAIN", permanent=True), Bounced("hard")),
    (dict(code=535, text="5.7.8 bad credentials", permanent=False), Deferred(600.0)),
    (dict(code=250, accepted=True, permanent=True), Delivered()),  # accepted is accepted
])
def test_after_an_attempt(kwargs, expected):
    assert attempt(**kwargs) == expected


@pytest.mark.parametrize("delay, left, expected", [
    (300, 3600.0, Deferred(300)),
    (300, 100.0, Deferred(120)),  # back about when it expires: a rung of the ladder
    (300, 0.0, Expired()),
    (300, -5.0, Expired()),
])
def test_after_a_hold(delay, left, expected):
    assert after_hold(delay, expires=5000.0 + left, now=5000.0) == expected
