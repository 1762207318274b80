"""A private Redis server for the tests of several nodes (see TESTBED.md): its own port
on the loopback address, its own directory, no persistence, a child of the test process,
stopped by its PID. `kill()` and `start()` again on the same port stand for a store that
goes away and comes back."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from .util import free_port, tail


class RedisError(RuntimeError):
    pass


class RedisServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port(lo=32000, hi=40000)
        self.dir = tempfile.mkdtemp(prefix="mta-redis-", dir="/tmp")
        self.log = os.path.join(self.dir, "redis.log")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisError("redis-server is not installed: run `bash scripts/setup.sh` first")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                 "--save", "", "--appendonly", "no", "--daemonize", "no",
                 "--notify-keyspace-events", ""],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RedisError(f"redis-server exited: {tail(self.log)}")
            if self.command("PING") == "+PONG":
                return
            time.sleep(0.05)
        raise RedisError(f"redis-server did not answer on port {self.port}: {tail(self.log)}")

    def command(self, *words: str) -> str | None:
        """One command in the inline protocol; the first reply line, or None when nothing
        answers (enough for PING and FLUSHALL without a client library)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall((" ".join(words) + "\r\n").encode())
                return s.makefile("rb").readline().decode().strip()
        except OSError:
            return None

    def flush(self) -> None:
        if self.command("FLUSHALL") != "+OK":
            raise RedisError("FLUSHALL failed")

    def kill(self) -> None:
        """SIGKILL: the store is gone at once, as after a crash (its data with it)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
