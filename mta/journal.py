"""Final outcomes on disk, so that a crash does not send a delivered message again.

A delivery is acknowledged only once its result is confirmed by the broker (mta.settle);
under load that takes tens to hundreds of milliseconds after the receiver's 250, and a
crash meanwhile (kill -9, out of memory) leaves the delivery unacknowledged: the broker
gives it out again and it would be sent a second time. The settler's record of final
outcomes recognises such a copy, but it lives in memory. Here every final outcome is
appended to a file in the same turn of the event loop it became known in, and a confirmed
result is marked; a process starting on the same file reads both back, so a redelivered
copy gets its result published if it never got out, and is acknowledged without a send.

The kernel keeps what a dying process wrote (no fsync: a crash of the machine loses
what the broker had not confirmed anyway). Only deliveries unacknowledged at a crash come
back, the prefetch windows, within seconds: the file starts afresh once it holds `limit`
outcomes, the previous one kept beside it (`.1`).

Lines: ``F <key> <status> <result>`` (a final outcome and its result document) and
``P <key>`` (its result confirmed), tab-separated; the key is JSON (ids may hold tabs),
the result is compact JSON.
"""

from __future__ import annotations

import asyncio
import logging
import os

import orjson

log = logging.getLogger("mta.journal")


class Journal:
    def __init__(self, path: str, limit: int):
        self.path = path
        self.limit = limit  # outcomes per file
        self._buffer: list[bytes] = []
        self._count = 0
        self._fd = self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)

    # ---- writing

    def final(self, key: str, status: str, body: bytes) -> None:
        self._add(b"F\t%b\t%b\t%b\n" % (orjson.dumps(key), status.encode(), body))
        self._count += 1

    def published(self, key: str) -> None:
        self._add(b"P\t%b\n" % orjson.dumps(key))

    def _add(self, line: bytes) -> None:
        if not self._buffer:
            # One write per turn of the loop: the 250 was read in this turn, and a crash
            # before its end leaves the transaction as unsettled as one still on the wire.
            asyncio.get_running_loop().call_soon(self.flush)
        self._buffer.append(line)

    def flush(self) -> None:
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        try:
            os.write(self._fd, data)
            if self._count >= self.limit:
                self._rotate()
        except OSError as exc:  # a full disk must not stop delivery; a crash may then duplicate
            log.warning("writing final outcomes to %s failed (%s); after a crash they may be sent again",
                        self.path, exc)

    def _rotate(self) -> None:
        os.close(self._fd)
        os.replace(self.path, self.path + ".1")
        self._fd = self._open()
        self._count = 0

    def close(self) -> None:
        self.flush()
        os.close(self._fd)

    # ---- reading back

    @staticmethod
    def read(path: str) -> dict[str, tuple[bytes | None, str, bool]]:
        """Outcomes in the files at ``path`` (older first), as the settler's record keeps
        them: key -> (result, status, confirmed). A torn last line (the crash) is skipped."""
        known: dict[str, tuple[bytes | None, str, bool]] = {}
        for name in (path + ".1", path):
            try:
                with open(name, "rb") as fh:
                    for line in fh:
                        _parse(line, known)
            except FileNotFoundError:
                continue
        return known


def _parse(line: bytes, known: dict) -> None:
    if not line.endswith(b"\n"):
        return
    kind, _, rest = line[:-1].partition(b"\t")
    try:
        if kind == b"F":
            key, status, body = rest.split(b"\t", 2)
            known[orjson.loads(key)] = (body, status.decode(), False)
        elif kind == b"P":
            key = orjson.loads(rest)
            entry = known.get(key)
            if entry is not None:
                known[key] = (None, entry[1], True)
    except ValueError:  # not a line this module wrote
        return
