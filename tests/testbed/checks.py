"""Assertion helpers shared by the black-box scenarios (plain asserts, readable messages)."""

from __future__ import annotations

import collections
import uuid
from datetime import datetime
from typing import Dict, Iterable, List


def run_id() -> str:
    """A short unique token to keep ids and recipients of one test apart."""
    return uuid.uuid4().hex[:8]


def finals(results: Dict[str, List[dict]], msg_id: str) -> List[dict]:
    return [r for r in results.get(msg_id, []) if r.get("final") is True]


def final_status_summary(results: Dict[str, List[dict]], ids: Iterable[str]) -> Dict[str, int]:
    """{final status (or 'none' / 'N finals'): count of ids} for failure messages."""
    c: collections.Counter = collections.Counter()
    for i in ids:
        f = finals(results, i)
        if not f:
            c["none"] += 1
        elif len(f) > 1:
            c[f"{len(f)} finals"] += 1
        else:
            c[str(f[0].get("status"))] += 1
    return dict(c)


def assert_each_final(results: Dict[str, List[dict]], ids: Iterable[str], status: str,
                      exactly_once: bool = True) -> Dict[str, dict]:
    """Every id has a final result of ``status`` (exactly one final when asked);
    returns {id: that final result}."""
    ids = list(ids)
    bad = {}
    out = {}
    for i in ids:
        f = finals(results, i)
        if not f or any(r.get("status") != status for r in f) or (exactly_once and len(f) != 1):
            bad[i] = [(r.get("status"), r.get("final")) for r in results.get(i, [])]
        else:
            out[i] = f[0]
    assert not bad, (f"{len(bad)}/{len(ids)} ids lack exactly one final {status!r} result; "
                     f"summary {final_status_summary(results, ids)}; "
                     f"e.g. {dict(list(bad.items())[:5])}")
    return out


def parse_time(value: str) -> float:
    """RFC 3339 time (``Z`` or offset, optional fraction) -> POSIX seconds."""
    return datetime.fromisoformat(str(value).replace("z", "Z").replace("Z", "+00:00")).timestamp()


def sink_duplicates(counts: Dict[str, int], ids: Iterable[str]) -> int:
    """Extra acceptances beyond the first, over ``ids``."""
    return sum(max(0, counts.get(i, 0) - 1) for i in ids)


def most_in_window(times: List[float], width: float) -> int:
    """Most of the sorted ``times`` that fall in any half-open window of ``width`` seconds."""
    j, best = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - width:
            j += 1
        best = max(best, i - j + 1)
    return best
