"""The shared fakes (tests/fakes.py) keep to the interfaces of what they stand in for: a
method the real class gains, loses or renames shows here, not as a unit test that passes
against a fake nobody uses any more. Every method of a fake (but the ones a test drives it
by) is one of the real class's, async where it is, taking the same parameters. And the
virtual clock keeps time as a clock must."""

from __future__ import annotations

import asyncio
import inspect

import pytest

import aiormq

from mta.broker.client import Consuming
from mta.clock import Clock
from mta.destinations.delivery import Destination
from mta.smtp.connector import Connector
from mta.smtp.session import Session
from tests.fakes import (FakeClock, FakeConnector, FakeConsumeChannel, FakeDestination, FakeEngine, FakePublishChannel,
                         FakeSession, _AtOnce)

PAIRS = [(FakeClock, Clock)]  # fakes with every method of the real one
# fake, real, the fake's own methods by which a test drives it
SUBSETS = [
    (FakeClock, Clock, {"advance", "next_timer", "run"}),
    (FakeDestination, Destination, set()),
    (FakeSession, Session, set()),
    (FakeConnector, Connector, set()),
    (FakePublishChannel, aiormq.Channel, {"drain", "answer"}),
    (FakeConsumeChannel, Consuming, {"acked_tags"}),
    (_AtOnce, asyncio.Queue, set()),
]
VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def _public(cls) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(member) for name, member in inspect.getmembers(cls, callable)
            if not name.startswith("_") and not inspect.isclass(member)}


@pytest.mark.parametrize("fake, real", PAIRS, ids=lambda c: c.__name__)
def test_a_fake_has_every_method_of_the_real_one_with_its_parameters(fake, real) -> None:
    fakes, reals = _public(fake), _public(real)
    missing = sorted(set(reals) - set(fakes))
    assert not missing, f"{fake.__name__} lacks {missing}"
    for name, signature in reals.items():
        assert list(fakes[name].parameters) == list(signature.parameters), (name, fakes[name], signature)


def mismatches(fake: inspect.Signature, real: inspect.Signature) -> list[str]:
    """How a call the real method takes could fail on the fake, or the other way round:
    its named parameters are the real one's (name, kind, place; optional where the real
    one's is); a real one it leaves out must be optional and taken by its ``**``/``*``."""
    found = []
    fakes, reals = fake.parameters, real.parameters
    real_positional = [n for n, p in reals.items() if p.kind not in VARIADIC and p.kind is not p.KEYWORD_ONLY]
    fake_kinds = {p.kind for p in fakes.values()}
    for place, (name, p) in enumerate(fakes.items()):
        if p.kind in VARIADIC:
            continue
        r = reals.get(name)
        if r is None:
            found.append(f"{name}: not a parameter of the real one")
        elif r.kind is not p.kind:
            found.append(f"{name}: {p.kind.description}, the real one's is {r.kind.description}")
        elif p.kind is not p.KEYWORD_ONLY and real_positional.index(name) != place:
            found.append(f"{name}: in place {place}, the real one's in {real_positional.index(name)}")
        elif r.default is not r.empty and p.default is p.empty:
            found.append(f"{name}: required, optional in the real one")
    for name, r in reals.items():
        if name in fakes or r.kind in VARIADIC:
            continue
        taken_by = p.VAR_KEYWORD if r.kind is r.KEYWORD_ONLY else p.VAR_POSITIONAL
        if r.default is r.empty or taken_by not in fake_kinds:
            found.append(f"{name}: the real one's, not taken")
    return found


@pytest.mark.parametrize("fake, real, controls", SUBSETS, ids=lambda c: getattr(c, "__name__", ""))
def test_every_method_of_a_fake_is_the_real_one_s(fake, real, controls) -> None:
    fakes, reals = _public(fake), _public(real)
    assert controls <= set(fakes), f"{fake.__name__} has no {sorted(controls - set(fakes))}"
    attributes = {name for name in dir(real) if name not in reals}  # a callable slot: Clock.wall
    unknown = sorted(set(fakes) - set(reals) - attributes - controls)
    assert not unknown, f"{real.__name__} has no {unknown}"
    for name in set(fakes) & set(reals) - controls:
        fake_method, real_method = getattr(fake, name), getattr(real, name)
        assert inspect.iscoroutinefunction(fake_method) == inspect.iscoroutinefunction(real_method), (
            f"{fake.__name__}.{name}: async on one side only")
        assert not mismatches(fakes[name], reals[name]), (f"{fake.__name__}.{name}", mismatches(fakes[name], reals[name]))


def test_what_ops_read_of_the_fake_engine_and_destination_the_real_ones_have() -> None:
    from mta.config import parse_config
    from mta.engine import Engine
    from tests.mta.test_forget_idle import destination

    engine = Engine(parse_config({}))  # no broker yet: nothing opened
    missing = sorted(name for name in vars(FakeEngine()) if not hasattr(engine, name))
    assert not missing, f"the engine has no {missing}"
    real = destination(FakeClock())
    missing = sorted(name for name in vars(FakeDestination("mx:a")) if name != "stats" and not hasattr(real, name))
    assert not missing, f"a destination has no {missing}"


def test_a_parameter_renamed_moved_or_left_out_is_a_mismatch() -> None:
    def real(self, mx, ip, *, tls, auth=None): ...
    def same(self, mx, ip, *, tls, **options): ...
    def renamed(self, mx, address, *, tls, auth=None): ...
    def moved(self, ip, mx, *, tls, auth=None): ...
    def narrower(self, mx, ip, *, tls): ...
    def stricter(self, mx, ip, *, tls, auth): ...
    sig = inspect.signature
    assert mismatches(sig(same), sig(real)) == []
    assert mismatches(sig(renamed), sig(real)) == ["address: not a parameter of the real one",
                                                   "ip: the real one's, not taken"]
    assert mismatches(sig(moved), sig(real)) == ["ip: in place 1, the real one's in 2",
                                                 "mx: in place 2, the real one's in 1"]
    assert mismatches(sig(narrower), sig(real)) == ["auth: the real one's, not taken"]
    assert mismatches(sig(stricter), sig(real)) == ["auth: required, optional in the real one"]


def test_timers_and_sleeps_run_in_time_order_as_the_clock_moves() -> None:
    clock, fired = FakeClock(100.0), []
    clock.call_at(105.0, fired.append, "b")
    clock.call_at(102.0, fired.append, "a")
    clock.call_at(103.0, fired.append, "cancelled").cancel()
    clock.advance(4.0)
    assert fired == ["a"] and clock.now() == clock.wall() == 104.0
    clock.advance(1.0)
    assert fired == ["a", "b"]


def test_run_jumps_to_each_sleeper_without_waiting() -> None:
    async def scenario():
        clock, woke = FakeClock(0.0), []

        async def sleeper(seconds: float) -> None:
            await clock.sleep(seconds)
            woke.append(clock.now())

        tasks = [asyncio.ensure_future(sleeper(s)) for s in (3600.0, 60.0)]
        await asyncio.wait_for(clock.run(lambda: len(woke) == 2), 5)
        await asyncio.gather(*tasks)
        return woke, clock.sleeps

    woke, sleeps = asyncio.run(scenario())
    assert woke == [60.0, 3600.0] and sorted(sleeps) == [60.0, 3600.0]
