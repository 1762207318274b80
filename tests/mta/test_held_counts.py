"""The per-destination count of held mail (mta.ops.metrics, read by `mta status`) stays
bounded when destinations come and go: counts of forgotten destinations are dropped."""

from types import SimpleNamespace

from mta.ops.metrics import HELD_KEYS, Metrics
from tests.fakes import FakeDestination


def held_job(key: str):
    return SimpleNamespace(destination=SimpleNamespace(key=key), domain=key.partition(":")[2], lane="bulk")


def test_100000_one_off_destinations_do_not_grow_the_held_counts() -> None:
    live = {f"mx:live{i}": FakeDestination(f"mx:live{i}") for i in range(10)}
    engine = SimpleNamespace(destinations=live, pauses=None)
    metrics = Metrics(engine, clock=lambda: 1000.0)
    peak = 0
    for i in range(100_000):
        metrics.not_tried(held_job(f"mx:once{i}"), 1000.0)  # held, then forgotten by the engine
        if i % 1000 == 0:
            metrics.not_tried(held_job(f"mx:live{i % 10}"), 1000.0)
        peak = max(peak, len(metrics.held_by_destination))
    assert peak <= HELD_KEYS + 1
    assert sum(metrics.held_by_destination.get(k, 0) for k in live) == 100  # the live ones keep theirs
