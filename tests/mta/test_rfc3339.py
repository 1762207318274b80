"""Result timestamps: the per-second cache formats exactly as datetime.isoformat does."""

from datetime import datetime, timezone

from mta.settle.results import rfc3339


def test_rfc3339_matches_isoformat():
    for t in (0.0, 1795993121.0, 1795993121.0005, 1795993121.9999996, 1795993121.123456, 1795993122.999,
              1795993122.5, 1700000000.0009999):
        expected = datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert rfc3339(t) == expected, t
