"""The order of a parallel run (tests/testbed/schedule.py): checks of the test bed first,
then the longest tests first; the duration table it reads and writes."""

import json

from tests.testbed.schedule import UNKNOWN_INTEGRATION, DurationRecorder, load_durations, order

IDS = [
    "tests/unit/test_a.py::test_fast",
    "tests/integration/test_x.py::test_known_short",
    "tests/integration/test_testbed.py::test_sinks",
    "tests/integration/test_y.py::test_long",
    "tests/integration/test_new.py::test_not_in_table",
    "tests/unit/test_b.py::test_slow_unit",
    "tests/integration/test_testbed.py::test_broker",
]
TABLE = {IDS[1]: 3.0, IDS[2]: 1.0, IDS[3]: 90.0, IDS[5]: 2.0}


def test_testbed_checks_first_then_longest_first():
    ranked = [IDS[i] for i in order(IDS, TABLE)]
    assert ranked == [
        IDS[6], IDS[2],          # the test bed's checks first, they too longest first
        IDS[3],                  # 90 s
        IDS[4],                  # not in the table: an integration test counts as 10 s
        IDS[1],                  # 3 s
        IDS[5],                  # 2 s
        IDS[0],                  # not in the table: a unit test counts as 0 s
    ]
    assert UNKNOWN_INTEGRATION > TABLE[IDS[1]]


def test_recorder_sums_phases_keeps_tests_not_run_and_drops_short_ones(tmp_path):
    path = tmp_path / "durations.json"
    path.write_text(json.dumps({"t::kept": 5.0, "t::became_fast": 4.0}))
    rec = DurationRecorder()
    for phase in (0.5, 2.0, 0.04):          # setup, call, teardown
        rec.add("t::measured", phase)
    rec.add("t::became_fast", 0.2)
    rec.write(str(path))
    assert load_durations(str(path)) == {"t::kept": 5.0, "t::measured": 2.5}


def test_a_missing_or_broken_table_orders_by_kind_only(tmp_path):
    assert load_durations(str(tmp_path / "absent.json")) == {}
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert load_durations(str(broken)) == {}
