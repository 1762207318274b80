"""A private PostgreSQL server for the tests of shared stores (see TESTBED.md): Debian's
binaries, its own data directory and port on the loopback address, trust authentication,
a child of the test process. initdb refuses to run as root, so the directory belongs to
the `postgres` user and the server runs as it. `stop()` and `start()` again on the same
directory and port stand for a database that goes away and comes back."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time

from .util import free_port, tail


class PostgresError(RuntimeError):
    pass


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise PostgresError("PostgreSQL is not installed: run `bash scripts/setup.sh` first")
    return found[-1]


def _as_postgres(args: list[str], **kw) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--", *args]
    return subprocess.run(args, capture_output=True, text=True, **kw)


class PostgresServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port(lo=40000, hi=45000)
        self.dir = tempfile.mkdtemp(prefix="mta-pg-", dir="/tmp")
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "log")
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self._initialised = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self, timeout: float = 60.0) -> None:
        if not self._initialised:
            done = _as_postgres([_bin("initdb"), "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                                 "--no-sync"], timeout=timeout)
            if done.returncode != 0:
                raise PostgresError(f"initdb failed: {done.stderr[-2000:]}")
            self._initialised = True
        # fsync off (the machine does not crash under a test), but every commit written
        # before it is acknowledged: `stop()` is a crash (-m immediate), and a commit the
        # server acknowledged must survive it, as on a real server.
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c full_page_writes=off")
        done = _as_postgres([_bin("pg_ctl"), "-D", self.data, "-l", self.log, "-o", options, "-w", "-t",
                             str(int(timeout)), "start"], timeout=timeout + 10)
        if done.returncode != 0:
            raise PostgresError(f"pg_ctl start failed: {done.stderr[-1000:]} {tail(self.log)}")

    def stop(self) -> None:
        if self._initialised and os.path.exists(os.path.join(self.data, "postmaster.pid")):
            _as_postgres([_bin("pg_ctl"), "-D", self.data, "-m", "immediate", "-w", "stop"], timeout=60)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _as_postgres([_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)]).returncode == 0:
                return
            time.sleep(0.1)
        raise PostgresError(f"PostgreSQL on {self.port} is not ready: {tail(self.log)}")
