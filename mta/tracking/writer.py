"""The SQLite event store written by a process of its own (`mta run`'s tracker hands it a
batch every quarter second over a pipe).

Why: SQLite's inserts (two rows and their indexes per message, and the pending table) cost
about 15 µs of CPU per message, in the engine's process more than that (the writing thread
and the event loop share one interpreter lock). Measured on the e2e benchmark, writing in a
thread took 12-14 % of the engine's messages per second; a child process takes the work
off the engine's core. The child is a Python of its own (mta.tracking.child: a fork of a
process with an event loop and threads is not safe, and multiprocessing's spawn would import
the parent's main script again, all of `mta` with it); it imports only the store, and answers
each batch with "ok" or what went wrong, so the tracker keeps a batch the store did not take
and tries it again.
It runs at a lower priority (NICE): the store is bookkeeping, delivery comes first. On cores
the broker, the sinks and the engine keep busy, the writer then takes what they leave, and
still about a tenth of a core when none is left over (a batch costs it about 10 µs a message at
full speed, the rows built from the results and inserted: 4 % of a core at 4,000 msg/s), so it
keeps up; while it lags, the tracker's batches wait for it (nothing is lost, `mta trace` sees
them later).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
from multiprocessing.connection import Connection

from mta.processes import helper
from mta.tracking.child import encode

START_TIMEOUT = 30.0  # seconds for the child to open the store


class WriterProcess:
    """The parent's side: `write(rows, pending)` as the in-thread store has it."""

    def __init__(self, path: str):
        self.path = path
        self.process = None
        self.connection = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._lock:
            await self._started()

    async def _started(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                return
            self.connection.close()  # the child died: a new one, on a new socket
        parent, child = socket.socketpair()
        with child:
            self.process = helper("mta.tracking.child", self.path, fd=child.fileno())
        self.connection = Connection(parent.detach())
        try:
            ready = await asyncio.wait_for(asyncio.to_thread(self._ready), START_TIMEOUT)
        except asyncio.TimeoutError:
            ready = b"no answer in %ds" % START_TIMEOUT
        if ready != b"ok":  # not a child half started: the next write starts another
            self.process.kill()
            self.connection.close()  # (a thread still waiting on it gets EOF and ends)
            raise RuntimeError(f"the event store's writer did not start: {ready!r}")

    def _ready(self) -> bytes:
        try:
            return self.connection.recv_bytes()
        except EOFError:  # the child ended before it opened the store
            return f"it ended with {self.process.wait()}".encode()

    async def write(self, rows: list[tuple], pending: tuple[list, list] | None = None) -> None:
        async with self._lock:
            await self._started()
            data = encode(rows, pending)
            answer = await asyncio.to_thread(self._round_trip, data)
        if answer != b"ok":
            raise RuntimeError(answer.decode("utf-8", "replace"))

    def _round_trip(self, data: bytes) -> bytes:
        self.connection.send_bytes(data)
        return self.connection.recv_bytes()

    async def close(self) -> None:
        if self.process is None:
            return
        try:
            self.connection.send_bytes(b"")
        except OSError:
            pass
        try:
            await asyncio.to_thread(self.process.wait, 10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.connection.close()
        self.process = None
