"""The journal of final outcomes (mta.journal): what one process wrote, the next reads back
as the settler's record, so a redelivered copy of a delivered message is not sent again."""

from __future__ import annotations

import os

from mta.settle.journal import Journal


def write(path: str, size: int, steps) -> None:
    journal = Journal(path, size)
    for step in steps:
        step(journal)
    # no close(): a killed process does not get to close anything


def test_outcomes_written_in_a_turn_are_read_back_by_the_next_process(tmp_path):
    path = str(tmp_path / "mta.yaml.outcomes")
    write(path, 4096, [
        lambda j: j.final("a\0x@d.test\x0012", "delivered", b'{"id":"a","status":"delivered"}'),
        lambda j: j.final("b\tid\0y@d.test\x0012", "bounced", b'{"id":"b\\tid"}'),
        lambda j: j.published("a\0x@d.test\x0012"),
    ])
    known = Journal.read(path)
    assert known == {
        "a\0x@d.test\x0012": (None, "delivered", True),  # its result got out: acknowledge only
        "b\tid\0y@d.test\x0012": (b'{"id":"b\\tid"}', "bounced", False),  # publish it, then acknowledge
    }


def test_a_full_file_becomes_the_previous_one(tmp_path):
    path = str(tmp_path / "outcomes")
    record = b'{"status":"delivered"}'  # F<tab>"kN"<tab>delivered<tab>...: 40 octets
    write(path, 100, [lambda j, i=i: j.final(f"k{i}", "delivered", record) for i in range(7)])
    assert os.path.exists(path + ".1")
    known = Journal.read(path)
    assert set(known) == {"k4", "k5", "k6"}  # two per file: k4 and k5 in .1, k6 here
    assert os.path.getsize(path) == 100  # room allocated up front


def test_a_starting_process_keeps_what_it_read_as_the_previous_file(tmp_path):
    path = str(tmp_path / "outcomes")
    write(path, 4096, [lambda j: j.final("k1", "delivered", b"{}")])
    assert set(Journal.read(path)) == {"k1"}
    write(path, 4096, [lambda j: j.final("k2", "delivered", b"{}")])  # the next process
    assert set(Journal.read(path)) == {"k1", "k2"}


def test_a_torn_last_record_and_foreign_lines_are_skipped(tmp_path):
    path = str(tmp_path / "outcomes")
    with open(path, "wb") as fh:
        fh.write(b'F\t"k1"\tdelivered\t{}\n')
        fh.write(b"garbage\n")
        fh.write(b'F\t"k2"\tdeliv')  # the process died in the middle of the copy
        fh.write(b"\0" * 50)
    assert Journal.read(path) == {"k1": (b"{}", "delivered", False)}


def test_nothing_to_read_back_at_first_start(tmp_path):
    assert Journal.read(str(tmp_path / "none")) == {}


def test_a_confirmed_result_is_marked_in_its_record(tmp_path):
    path = str(tmp_path / "outcomes")
    journal = Journal(path, 4096)
    first = journal.final("k1", "delivered", b"{}")
    journal.final("k2", "bounced", b"{}")
    journal.published("k1", first)
    size = os.path.getsize(path)
    assert Journal.read(path) == {"k1": (None, "delivered", True), "k2": (b"{}", "bounced", False)}
    assert size == 4096  # marked in place: no record added
    with open(path, "rb") as fh:
        assert fh.read().count(b"\n") == 2


def test_a_record_in_the_previous_file_is_still_marked(tmp_path):
    path = str(tmp_path / "outcomes")
    journal = Journal(path, 100)
    record = b'{"status":"delivered"}'  # 40 octets a record: two per file
    marks = [journal.final(f"k{i}", "delivered", record) for i in range(5)]  # k4 starts a third file
    journal.published("k3", marks[3])  # in `.1`
    journal.published("k0", marks[0])  # its file is gone: nothing to mark, nothing breaks
    journal.published("k4", marks[4])
    assert Journal.read(path) == {"k2": (record, "delivered", False), "k3": (None, "delivered", True),
                                  "k4": (None, "delivered", True)}


def _resident(path: str) -> int:
    """KiB of this process's memory mapped from the file at `path` and resident."""
    total, inside = 0, False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            if line[0] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:
                inside = line.rstrip().endswith(" " + path)
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


def test_what_lies_behind_the_write_position_leaves_memory_and_stays_in_the_file(tmp_path):
    """Records far behind the write position are let go from the process's resident set (the
    journal's two files would otherwise sit in the MTA's RSS whole); they are still in the
    file, and a late mark of one of them still lands."""
    from mta.settle.journal import RESIDENT

    path = str(tmp_path / "outcomes")
    journal = Journal(path, 16 * RESIDENT)
    body = b'{"status":"delivered","results":[' + b'{"description":"250 ok"},' * 40 + b'{}]}'
    marks = [journal.final(f"k{i}", "delivered", body) for i in range(8 * RESIDENT // len(body))]
    assert _resident(path) <= 3 * RESIDENT // 1024  # of the 8 written
    journal.published("k0", marks[0])  # its page was let go: the mark reads it in again
    known = Journal.read(path)
    assert len(known) == len(marks) and known["k0"] == (None, "delivered", True)
    assert known[f"k{len(marks) - 1}"] == (body, "delivered", False)
