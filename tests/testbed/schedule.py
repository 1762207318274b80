"""Test order for parallel runs: the test bed's own checks first, then the longest tests.

With several worker processes (pytest-xdist, ``--dist load --maxschedchunk 1``) the suite
ends when the last worker ends, and the workers take tests in collection order, one or two
at a time.  Starting the longest tests first (longest processing time first) keeps one
long test from starting near the end while the other workers have nothing left to do.

How long a test takes comes from ``durations.json`` next to this module: {node id:
seconds, setup and teardown included}, written by a run with
``MTA_TEST_DURATIONS=tests/testbed/durations.json`` (see ``DurationRecorder``).  A test
not in it counts as ``UNKNOWN_INTEGRATION`` seconds when it is an integration test (a new
scenario is more likely long than short), else as 0.  The table only orders tests: a stale
one makes a run slower, never wrong.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List

DURATIONS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "durations.json")
TESTBED_CHECKS = "tests/integration/test_testbed.py"
UNKNOWN_INTEGRATION = 10.0
RECORD_AT_LEAST = 1.0   # shorter tests are left out of the table: they go last anyway


def load_durations(path: str = DURATIONS_FILE) -> Dict[str, float]:
    try:
        with open(path) as fh:
            table = json.load(fh)
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in table.items()} if isinstance(table, dict) else {}


def estimate(nodeid: str, durations: Dict[str, float]) -> float:
    if nodeid in durations:
        return durations[nodeid]
    return UNKNOWN_INTEGRATION if nodeid.startswith("tests/integration/") else 0.0


def order(nodeids: List[str], durations: Dict[str, float]) -> List[int]:
    """Indexes of ``nodeids`` in run order: test bed checks first (when the infrastructure
    is broken, say so early), then the rest; in each, the longest first, ties in
    collection order."""
    return sorted(range(len(nodeids)),
                  key=lambda i: (not nodeids[i].startswith(TESTBED_CHECKS),
                                 -estimate(nodeids[i], durations), i))


class DurationRecorder:
    """Sums each test's setup, call and teardown time from the reports (in the controller
    process under xdist, which sees every worker's reports) and writes the table."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}

    def add(self, nodeid: str, duration: float) -> None:
        self.seconds[nodeid] = self.seconds.get(nodeid, 0.0) + duration

    def write(self, path: str) -> None:
        """Write the table to ``path``, keeping the entries of tests not run this time."""
        table = {k: v for k, v in load_durations(path).items() if k not in self.seconds}
        table.update({k: round(v, 1) for k, v in self.seconds.items() if v >= RECORD_AT_LEAST})
        with open(path, "w") as fh:
            json.dump(dict(sorted(table.items())), fh, indent=0, sort_keys=False)
            fh.write("\n")
