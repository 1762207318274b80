"""The event store's writer process: `python -m mta.tracking.child PATH FD`, started by
mta.tracking.writer. It imports only the store (no asyncio, nothing of the engine), writes each
batch it reads from FD and answers "ok" or what went wrong.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
from multiprocessing.connection import Connection

NICE = 10  # added to the writer's nice value: a CPU share of about a tenth of the engine's when both want one


def serve(path: str, connection: Connection) -> None:
    """The child: write each batch it receives until it receives an empty one or the parent
    is gone. SIGTERM and SIGINT (a signal to the whole process group) are the parent's to
    act on: it sends its last batch, then the empty one."""
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
                store.write(*decode(data))
                connection.send_bytes(b"ok")
            except Exception as exc:  # a locked or full disk: the parent keeps the batch
                connection.send_bytes(f"{type(exc).__name__}: {exc}".encode())
    finally:
        store.close()


def encode(rows: list[tuple], pending: tuple[list, list] | None) -> bytes:
    """A batch for the pipe: rows, and results as the bytes published (pickle: the child is
    ours, and bytes pass as they are)."""
    return pickle.dumps((rows, pending), pickle.HIGHEST_PROTOCOL)


def decode(data: bytes) -> tuple[list[tuple], tuple[list, list] | None]:
    return pickle.loads(data)


if __name__ == "__main__":
    serve(sys.argv[1], Connection(int(sys.argv[2])))
