"""The shared fakes (tests/fakes.py) keep to the interfaces of what they stand in for: a
method the real class gains, loses or renames shows here, not as a unit test that passes
against a fake nobody uses any more. And the virtual clock keeps time as a clock must."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from mta.clock import Clock
from tests.fakes import FakeClock

PAIRS = [(FakeClock, Clock)]


def _public(cls) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(member) for name, member in inspect.getmembers(cls, callable)
            if not name.startswith("_")}


@pytest.mark.parametrize("fake, real", PAIRS, ids=lambda c: c.__name__)
def test_a_fake_has_every_method_of_the_real_one_with_its_parameters(fake, real) -> None:
    fakes, reals = _public(fake), _public(real)
    missing = sorted(set(reals) - set(fakes))
    assert not missing, f"{fake.__name__} lacks {missing}"
    for name, signature in reals.items():
        assert list(fakes[name].parameters) == list(signature.parameters), (name, fakes[name], signature)


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
