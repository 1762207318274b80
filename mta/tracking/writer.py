"""The SQLite event store written by a process of its own (`mta run`'s tracker hands it a
batch every quarter second over a pipe).

Why: SQLite's inserts (two rows and their indexes per message, and the pending table) cost
about 15 µs of CPU per message, in the engine's process more than that (the writing thread
and the event loop share one interpreter lock). Measured on the e2e benchmark, writing in a
thread took 12-14 % of the engine's messages per second; a child process takes the work
off the engine's core. The child is started with `spawn` (a fork of a process with an event
loop and threads is not safe), imports only the store, and answers each batch with "ok" or
what went wrong, so the tracker keeps a batch the store did not take and tries it again.
It runs at a lower priority (NICE): the store is bookkeeping, delivery comes first. On cores
the broker, the sinks and the engine keep busy, the writer then takes what they leave, and
still about a tenth of a core when none is left over (a batch costs it about 12 µs a message
at full speed, 5 % of a core at 4,000 msg/s), so it keeps up; while it lags, the tracker's
batches wait for it (nothing is lost, `mta trace` sees them later).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import pickle

log = logging.getLogger("mta.tracking")

START_TIMEOUT = 30.0  # seconds for the child to open the store
NICE = 10  # added to the writer's nice value: a CPU share of about a tenth of the engine's when both want one


def serve(path: str, connection) -> None:
    """The child: write each batch it receives until it receives an empty one or the parent
    is gone. SIGTERM and SIGINT (a signal to the whole process group) are the parent's to
    act on: it sends its last batch, then the empty one."""
    import signal

    from mta.tracking.store import EventStore

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(NICE)
    store = EventStore(path)
    connection.send_bytes(b"ok")
    try:
        while True:
            try:
                data = connection.recv_bytes()
            except EOFError:  # the parent is gone
                return
            if not data:
                return
            try:
                store.write(*WriterProcess.decode(data))
                connection.send_bytes(b"ok")
            except Exception as exc:  # a locked or full disk: the parent keeps the batch
                connection.send_bytes(f"{type(exc).__name__}: {exc}".encode())
    finally:
        store.close()


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
        if self.process is not None and self.process.is_alive():
            return
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self.process = context.Process(target=serve, args=(self.path, child), name="mta-events", daemon=True)
        self.process.start()
        child.close()
        self.connection = parent
        ready = await asyncio.wait_for(asyncio.to_thread(parent.recv_bytes), START_TIMEOUT)
        if ready != b"ok":
            raise RuntimeError(f"the event store's writer did not start: {ready!r}")

    async def write(self, rows: list[tuple], pending: tuple[list, list] | None = None) -> None:
        async with self._lock:
            await self._started()
            data = self.encode(rows, pending)
            answer = await asyncio.to_thread(self._round_trip, data)
        if answer != b"ok":
            raise RuntimeError(answer.decode("utf-8", "replace"))

    @staticmethod
    def encode(rows: list[tuple], pending: tuple[list, list] | None) -> bytes:
        """A batch for the pipe: rows, and results as the bytes published (pickle: the
        child is ours, and bytes pass as they are)."""
        return pickle.dumps((rows, pending), pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def decode(data: bytes) -> tuple[list[tuple], tuple[list, list] | None]:
        return pickle.loads(data)

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
        await asyncio.to_thread(self.process.join, 10)
        if self.process.is_alive():
            self.process.kill()
        self.connection.close()
        self.process = None
