"""The cheap per-outcome bookkeeping behind the metrics: histograms, bounded destination
labels, the last minute's counts. No event loop, no HTTP."""

from mta.ops.metrics import OTHER, DestinationLabels, Histogram, Metrics, RecentCounts
from tests.fakes import FakeEngine


def test_histogram_buckets_are_cumulative_with_inf():
    h = Histogram((0.1, 1.0, 10.0))
    for value in (0.05, 0.1, 0.5, 5, 50):
        h.observe(value)
    buckets, total = h.exported()
    assert buckets == [("0.1", 2), ("1.0", 3), ("10.0", 4), ("+Inf", 5)]  # le is inclusive
    assert total == 55.65


def test_destination_labels_are_bounded_and_sticky():
    labels = DestinationLabels(top=2, promote_after=3)
    seen = [labels.of("a") for _ in range(3)]
    assert seen == [OTHER, OTHER, "a"]  # earned after 3 outcomes; the first two stay in other
    assert [labels.of("b") for _ in range(3)][-1] == "b"
    assert [labels.of("c") for _ in range(10)] == [OTHER] * 10  # no slot left
    assert labels.of("a") == "a" and labels.current("c") == OTHER
    assert labels.named == {"a", "b"}


def test_recent_counts_keep_exactly_the_last_sixty_seconds():
    recent = RecentCounts(1000.0)
    recent.add("x", 1000.2)
    recent.add("x", 1030.0)
    recent.add("y", 1059.9)
    assert recent.total(1059.9) == {"x": 2, "y": 1}
    assert recent.total(1060.0) == {"x": 1, "y": 1}  # second 1000 has left the window
    assert recent.total(1090.5) == {"y": 1}
    assert recent.total(5000.0) == {}
    recent.add("z", 4999.0)  # a clock that stepped back counts into the current second
    assert recent.total(5000.0) == {"z": 1}


def test_dkim_batches_count_as_their_messages():
    metrics = Metrics(FakeEngine())
    metrics.observe_dkim_signing(0.02, messages=10)  # a batch: 2 ms each
    metrics.observe_dkim_signing(0.5)
    metrics.observe_dkim_signing(0.1, messages=0)  # nothing signed: nothing recorded
    buckets, total = metrics.dkim_signing.exported()
    assert dict(buckets)["0.0025"] == 10 and dict(buckets)["+Inf"] == 11
    assert abs(total - 0.52) < 1e-9


class _Job:
    lane = "bulk"
    first_seen = 0.0

    def __init__(self, key):
        self.destination = type("Resolved", (), {"key": key})()


def test_expiry_while_held_is_an_outcome_but_not_an_attempt():
    from prometheus_client import generate_latest

    metrics = Metrics(FakeEngine(), clock=lambda: 100.0, promote_after=1)
    metrics.outcome(_Job("mx:a"), "deferred", None, 100.0)
    metrics.outcome(_Job("mx:a"), "expired", "soft", 100.0)
    metrics.outcome(_Job("mx:a"), "expired", "soft", 100.0, tried=False)
    text = generate_latest(metrics.registry).decode()
    assert 'mta_expired_total{destination="mx:a",lane="bulk"} 2.0' in text
    assert 'mta_delivery_attempts_total{destination="mx:a",lane="bulk"} 2.0' in text
    assert metrics.last_minute(100.0)["bulk"] == {"deferred": 1, "expired": 2, "attempt": 2}
