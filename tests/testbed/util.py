"""Small shared helpers for the test bed (no pytest dependency)."""

from __future__ import annotations

import os
import random
import socket
import time
from typing import Callable, Iterable


def tail(path: str, nbytes: int = 6000) -> str:
    """The last ``nbytes`` of a file as text ('' when it does not exist)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - nbytes))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def port_is_free(port: int, hosts: Iterable[str] = ("127.0.0.1",), udp: bool = False) -> bool:
    """True when a TCP (and optionally UDP) listener could bind ``port`` on every host."""
    kinds = [socket.SOCK_STREAM] + ([socket.SOCK_DGRAM] if udp else [])
    socks = []
    try:
        for host in hosts:
            for kind in kinds:
                s = socket.socket(socket.AF_INET, kind)
                socks.append(s)
                if kind == socket.SOCK_STREAM:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def free_port(hosts: Iterable[str] = ("127.0.0.1",), udp: bool = False,
              lo: int = 20000, hi: int = 32000, tries: int = 200) -> int:
    """A port that is currently free on every host in ``hosts`` (racy, good enough for tests)."""
    hosts = list(hosts)
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(tries):
        port = rng.randrange(lo, hi)
        if port_is_free(port, hosts, udp=udp):
            return port
    raise RuntimeError(f"no free port found in {lo}-{hi} for {len(hosts)} hosts")


def wait_for(pred: Callable[[], object], timeout: float, interval: float = 0.1,
             what: str = "condition") -> object:
    """Poll ``pred`` until it returns a truthy value; raise TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)
