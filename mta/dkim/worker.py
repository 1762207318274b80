"""A DKIM signing process: `python -m mta.dkim.worker FD`, started by `mta.dkim.signpool`.

It reads frames (8-byte length, then a pickle) from the socket FD: first the keys, then
batches `(number, now, items)`; it answers each batch with `(number, results)` from
`mta.dkim.signature.sign_batch`. It ends when the socket closes, which the kernel does when the MTA
exits in any way, kill -9 included.
"""

from __future__ import annotations

import pickle
import signal
import socket
import struct
import sys

from mta.dkim import signature

HEADER = struct.Struct(">Q")


def frame(obj) -> bytes:
    payload = pickle.dumps(obj, protocol=5)
    return HEADER.pack(len(payload)) + payload


def _read(sock: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 22))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _receive(sock: socket.socket):
    head = _read(sock, HEADER.size)
    if head is None:
        return None
    payload = _read(sock, HEADER.unpack(head)[0])
    return None if payload is None else pickle.loads(payload)


def main(fd: int) -> int:
    # Ctrl-C in a terminal reaches the whole process group: the MTA shuts down gracefully
    # and this process ends with it (its socket closes), not before
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    exported = _receive(sock)
    if exported is None:
        return 0
    signature.init_keys(exported)
    while True:
        request = _receive(sock)
        if request is None:
            return 0
        number, now, items = request
        sock.sendall(frame((number, signature.sign_batch(items, now))))


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
