"""Final outcomes on disk, so that a crash does not send a delivered message again.

A delivery is acknowledged only once its result is confirmed by the broker (mta.settle);
under load that takes tens to hundreds of milliseconds after the receiver's 250 (over a
second right after a start), and a crash meanwhile (kill -9, out of memory) leaves the
delivery unacknowledged: the broker gives it out again and it would be sent a second time.
The settler's record of final outcomes recognises such a copy, but lives in memory. Here
every final outcome is written to a file the moment it is known, and a confirmed result is
marked; a process starting on the same file reads both back, so a redelivered copy gets its
result published if it never got out, and is acknowledged without a send.

The file is mapped into memory: a record costs a copy, not a system call, and the kernel
keeps what a dying process wrote (no msync: a crash of the machine loses what the broker had
not confirmed anyway). Its space is allocated up front (a full disk fails the start or a
rotation, never a write). Only deliveries unacknowledged at a crash come back, the prefetch
windows, within seconds: when the file is full it becomes `<path>.1` and a new one starts;
so does a starting process's, after reading both. What lies more than RESIDENT octets behind
the write position is let go from the process's memory (madvise DONTNEED: the kernel keeps
the pages of the file, and a late mark reads its page in again), so the two files, 9 MB each
at the default prefetch, do not sit in the MTA's resident set.

Records: ``F <key> <status> <result>``, tab-separated lines: a final outcome and its result
document; the key is JSON (ids may hold tabs), the result compact JSON. Once the result is
confirmed, the record's first octet becomes ``P``: one octet written in place, not a second
record (``P <key>`` lines, written when the record is not at hand, mean the same). The
unused end of a file is zeros.
"""

from __future__ import annotations

import logging
import mmap
import os

import orjson

from mta.config import ConfigError

log = logging.getLogger("mta.journal")

RESIDENT = 1 << 20  # octets behind the write position kept mapped in (marks come within seconds)


class Journal:
    def __init__(self, path: str, size: int):
        self.path = path
        self.size = size  # bytes per file
        self._map: mmap.mmap | None = None
        self._previous: mmap.mmap | None = None  # the file before, now `.1`: its records can still be marked
        self._base = 0  # the mark of this file's first octet: marks count octets over all files
        self._pos = 0
        self._resident = 0  # where the part of the current file still mapped in begins
        self._start()

    def _start(self) -> None:
        """A fresh, zeroed file of `size` bytes, the previous one kept as `.1`."""
        if self._previous is not None:
            self._previous.close()
        self._previous, self._map = self._map, None
        if os.path.exists(self.path):
            os.replace(self.path, self.path + ".1")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.posix_fallocate(fd, 0, self.size)
            self._map = mmap.mmap(fd, self.size)
        finally:
            os.close(fd)
        if self._previous is not None:
            self._base += self.size
            self._previous.madvise(mmap.MADV_DONTNEED)  # its few marks still to come read their pages in
        self._pos = self._resident = 0

    # ---- writing

    def final(self, key: str, status: str, body: bytes) -> int | None:
        """Record a final outcome: a copy into the mapped file. Returns the record's mark for
        `published` (None: not recorded)."""
        record = b"F\t%b\t%b\t%b\n" % (orjson.dumps(key), status.encode(), body)
        start = self._pos
        end = start + len(record)
        if end > self.size:
            return self._append(record)
        self._map[start:end] = record
        self._pos = end
        if end - self._resident > 2 * RESIDENT:
            self._release(end)
        return self._base + start

    def _release(self, end: int) -> None:
        """Let go of the pages more than RESIDENT octets behind `end` (shared pages of the
        file: what was written stays in the kernel's page cache and reaches the file)."""
        upto = (end - RESIDENT) // mmap.PAGESIZE * mmap.PAGESIZE
        self._map.madvise(mmap.MADV_DONTNEED, self._resident, upto - self._resident)
        self._resident = upto

    def published(self, key: str, mark: int | None = None) -> None:
        """The result of the outcome recorded at `mark` (or under `key`) is confirmed."""
        if mark is not None:
            at = mark - self._base
            if at >= 0:
                self._map[at] = 80  # b"P"
                return
            if at >= -self.size and self._previous is not None:
                self._previous[at + self.size] = 80
            return  # (a file older than `.1` is gone, and its records with it)
        self._append(b"P\t%b\n" % orjson.dumps(key))

    def _append(self, record: bytes) -> int | None:
        end = self._pos + len(record)
        if end > self.size:
            if len(record) > self.size // 2:
                return None  # a result too big to keep: after a crash this one message may be sent again
            try:
                self._start()
            except OSError as exc:  # no room on the disk: delivery goes on without the record
                log.warning("the journal of final outcomes at %s stops (%s): after a crash, mail "
                            "delivered just before it may be sent again", self.path, exc)
                self.final = self.published = _nothing  # type: ignore[method-assign]
                return None
            end = len(record)
        start = self._pos
        self._map[start:end] = record
        self._pos = end
        return self._base + start

    def close(self) -> None:
        for mapped in (self._map, self._previous):
            if mapped is not None:
                mapped.close()
        self._map = self._previous = None

    # ---- reading back

    @staticmethod
    def read(path: str) -> dict[str, tuple[bytes | None, str, bool]]:
        """Outcomes in the files at ``path`` (older first), as the settler's record keeps
        them: key -> (result, status, confirmed). A torn last record (the crash) is skipped."""
        known: dict[str, tuple[bytes | None, str, bool]] = {}
        for name in (path + ".1", path):
            try:
                with open(name, "rb") as fh:
                    data = fh.read()
            except FileNotFoundError:
                continue
            end = data.find(b"\0")
            for line in (data if end < 0 else data[:end]).split(b"\n")[:-1]:
                _parse(line, known)
        return known


def _nothing(*args) -> None:
    return None


def _parse(line: bytes, known: dict) -> None:
    kind, _, rest = line.partition(b"\t")
    try:
        if kind == b"F":
            key, status, body = rest.split(b"\t", 2)
            known[orjson.loads(key)] = (body, status.decode(), False)
        elif kind == b"P":
            key, tab, status = rest.partition(b"\t")
            if tab:  # a record marked in place
                known[orjson.loads(key)] = (None, status.partition(b"\t")[0].decode(), True)
                return
            key = orjson.loads(rest)
            entry = known.get(key)
            if entry is not None:
                known[key] = (None, entry[1], True)
    except ValueError:  # not a record this module wrote
        return


JOURNAL_BYTES = 2048  # room per outcome in the journal, whose files hold 4 prefetch windows each


def open_journal(setting: str, config_path: str | None, window: int) -> tuple[Journal | None, dict]:
    """The journal `broker.journal` asks for, and the final outcomes a previous process
    recorded in it; (None, {}) for none. `window`: the prefetch windows of both lanes."""
    if setting == "" or (setting == "auto" and config_path is None):
        return None, {}
    path = config_path + ".outcomes" if setting == "auto" else \
        os.path.join(os.path.dirname(os.path.abspath(config_path or ".")), setting)
    try:
        recorded = Journal.read(path)
        journal = Journal(path, max(1 << 20, 4 * window * JOURNAL_BYTES))
    except OSError as exc:
        if setting != "auto":
            raise ConfigError([f"broker.journal: cannot write {path}: {exc}"]) from exc
        log.warning("final outcomes are kept in memory only (%s: %s): after a crash, mail "
                    "delivered just before it may be sent again", path, exc)
        return None, {}
    log.info("final outcomes recorded in %s (%d read back)", path, len(recorded))
    return journal, recorded
