"""Signing processes driven from the event loop: one socket pair each, no helper threads.

Why not `concurrent.futures.ProcessPoolExecutor`: its manager and feeder threads, wake-up
pipe and per-task bookkeeping take the GIL from the event loop for every batch, which
showed up as a sixth of the MTA's own CPU in a profile of a signed benchmark run. Here a
batch is one pickle and one `send` on the loop, its answer one `recv` when the socket is
readable. Each worker holds at most one batch, so while all are busy the next batch grows.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import socket
import subprocess
from collections.abc import Callable, Sequence

from mta.dkim.worker import HEADER, frame
from mta.processes import helper

log = logging.getLogger("mta.signer")

Done = Callable[[list | None, str | None], None]  # (results, or None and why)


class WorkerDied(Exception):
    pass


class _Worker:
    def __init__(self, exported: Sequence, on_dead: Callable[["_Worker"], None]):
        parent, child = socket.socketpair()
        self.proc = helper("mta.dkim.worker", fd=child.fileno())
        child.close()
        parent.setblocking(False)
        self.sock = parent
        self.on_dead = on_dead
        self.out = bytearray(frame(list(exported)))
        self.inbuf = bytearray()
        self.busy: tuple[int, Done] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.writing = False
        self.dead = False
        self.retiring = False  # ends once its batch is answered

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.loop is None:
            self.loop = loop
            loop.add_reader(self.sock.fileno(), self._readable)
            self._write()

    def send(self, number: int, now: int, items: list, done: Done) -> None:
        self.busy = (number, done)
        self.out += frame((number, now, items))
        self._write()

    def _write(self) -> None:
        try:
            while self.out:
                sent = self.sock.send(self.out)
                del self.out[:sent]
        except BlockingIOError:
            pass
        except OSError:
            self._die()
            return
        if self.out and not self.writing:
            self.writing = True
            self.loop.add_writer(self.sock.fileno(), self._write)
        elif not self.out and self.writing:
            self.writing = False
            self.loop.remove_writer(self.sock.fileno())

    def _readable(self) -> None:
        try:
            while True:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    self._die()
                    return
                self.inbuf += chunk
        except BlockingIOError:
            pass
        except OSError:
            self._die()
            return
        while len(self.inbuf) >= HEADER.size:
            size = HEADER.unpack_from(self.inbuf)[0]
            if len(self.inbuf) < HEADER.size + size:
                break
            number, results = pickle.loads(memoryview(self.inbuf)[HEADER.size:HEADER.size + size])
            del self.inbuf[:HEADER.size + size]
            busy, self.busy = self.busy, None
            if busy is not None and busy[0] == number:
                busy[1](results, None)
        if self.retiring and self.busy is None:
            self.dead = True
            self.close()

    def _die(self) -> None:
        if self.dead:
            return
        self.dead = True
        self.close()
        busy, self.busy = self.busy, None
        if busy is not None:
            busy[1](None, f"signing process {self.proc.pid} ended (exit code {self.proc.poll()})")
        self.on_dead(self)

    def close(self) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.remove_reader(self.sock.fileno())
            if self.writing:
                self.loop.remove_writer(self.sock.fileno())
        self.sock.close()  # the worker reads EOF and exits
        try:
            self.proc.wait(0.5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class SignPool:
    def __init__(self, exported: Sequence, size: int):
        self.exported = list(exported)
        self.size = size
        self.workers: list[_Worker] = [self._spawn() for _ in range(size)]

    def _spawn(self) -> _Worker:
        return _Worker(self.exported, self._dead)

    def _dead(self, worker: _Worker) -> None:
        # replaced when a batch needs it (not now: during shutdown nothing should start)
        log.warning("DKIM signing process %d ended unexpectedly (exit code %s); a new one takes the next batch",
                    worker.proc.pid, worker.proc.returncode)

    def idle(self) -> int:
        return sum(1 for w in self.workers if w.busy is None)

    def send(self, number: int, now: int, items: list, done: Done) -> bool:
        """Give the batch to an idle worker; False when all are busy."""
        loop = asyncio.get_running_loop()
        for i, worker in enumerate(self.workers):
            if worker.busy is None:
                if worker.dead:
                    worker = self.workers[i] = self._spawn()
                worker.attach(loop)
                worker.send(number, now, items, done)
                return True
        return False

    def retire(self) -> None:
        """Replaced after a reload: idle workers end now, busy ones once they answer."""
        workers, self.workers = self.workers, []
        for worker in workers:
            if worker.busy is None:
                worker.dead = True
                worker.close()
            else:
                worker.retiring = True

    def close(self) -> None:
        workers, self.workers = self.workers, []
        for worker in workers:
            worker.dead = True
            worker.close()
