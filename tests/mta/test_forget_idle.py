"""Idle destinations are forgotten, unless they still have something to remember."""

from __future__ import annotations

from mta.config import parse_config
from mta.destinations.delivery import FORGET_AFTER, Destination
from mta.routing.mx import MxAnswer, MxHost
from mta.routing.rules import Rules
from tests.fakes import FakeClock


def destination(clock: FakeClock) -> Destination:
    policy = Rules(parse_config({})).resolve("example.test", None).policy
    answer = MxAnswer((MxHost("mx.example.test", 10, ("192.0.2.1",)),))
    return Destination("mx.example.test", answer, policy, connector=None, port=25,
                       done=lambda *a: None, hold=lambda *a: None, clock=clock)


def test_a_destination_idle_long_enough_is_forgettable():
    clock = FakeClock(1000.0)
    d = destination(clock)
    clock.advance(FORGET_AFTER - 1)
    assert not d.forgettable()
    clock.advance(1)
    assert d.forgettable()


def test_a_paused_destination_is_kept_until_its_pause_ends():
    clock = FakeClock(1000.0)
    d = destination(clock)
    d.suspend(clock.wall() + 2 * FORGET_AFTER, "test")
    clock.advance(FORGET_AFTER)
    assert not d.forgettable()
    clock.advance(FORGET_AFTER)
    assert d.forgettable()


def test_an_open_ended_pause_is_never_forgotten():
    clock = FakeClock(1000.0)
    d = destination(clock)
    d.suspend(None, "operator")
    clock.advance(10 * FORGET_AFTER)
    assert not d.forgettable()


def test_held_mail_due_back_keeps_it():
    clock = FakeClock(1000.0)
    d = destination(clock)
    d.held.note(clock.t, 1200)
    clock.advance(FORGET_AFTER)
    assert not d.forgettable()
    clock.advance(1200)
    assert d.forgettable()
