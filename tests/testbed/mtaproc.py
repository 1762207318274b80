"""Run the MTA as a black box: ``python -m mta run CONFIG`` in its own session."""

from __future__ import annotations

import asyncio
import atexit
import os
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional

from .amqp import aqueue_info
from .util import tail

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class MtaError(RuntimeError):
    pass


_LIVE: "set[MtaProcess]" = set()


@atexit.register
def _kill_leftovers() -> None:
    """Safety net: never leave an MTA running after the test process ends."""
    for proc in list(_LIVE):
        proc.kill9()


class MtaProcess:
    def __init__(self, config_path: str, env: Optional[Dict[str, str]] = None,
                 log_path: Optional[str] = None, args: Optional[List[str]] = None,
                 cmd: Optional[List[str]] = None):
        """``cmd`` replaces ``[python, -m, mta, run, CONFIG, *args]`` (for testing the
        test bed itself)."""
        self.config_path = os.path.abspath(config_path)
        self.extra_env = dict(env or {})
        self.log_path = log_path or self.config_path + ".log"
        self.cmd = list(cmd) if cmd else (
            [sys.executable, "-m", "mta", "run", self.config_path] + list(args or []))
        self.proc: Optional[subprocess.Popen] = None
        self.returncode: Optional[int] = None

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def start(self) -> "MtaProcess":
        if self.alive():
            return self
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        # the repo on the path even if the package was not installed (editable install does it)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
        env.update(self.extra_env)
        log = open(self.log_path, "ab")
        try:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} start: {' '.join(self.cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.cmd, env=env, cwd=REPO_ROOT,
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        self.returncode = None
        _LIVE.add(self)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, nbytes: int = 6000) -> str:
        return tail(self.log_path, nbytes)

    def wait_ready(self, url: str, timeout: float = 30.0, queue: str = "mta.bulk",
                   require_consumer: bool = False) -> "MtaProcess":
        """Wait until ``queue`` exists in the vhost of ``url`` (optionally with a consumer)
        while the process stays alive; raise MtaError with the log tail otherwise."""
        deadline = time.monotonic() + timeout
        last_err = ""
        while True:
            if not self.alive():
                code = self.proc.returncode if self.proc else None
                raise MtaError(f"MTA exited with {code} before it was ready "
                               f"(cmd: {' '.join(self.cmd)})\n--- log tail:\n{self.log_tail()}")
            try:
                info = asyncio.run(aqueue_info(url, queue))
                if (info is not None and (not require_consumer or info["consumers"] > 0)
                        and self.alive()):
                    return self
            except Exception as exc:                # broker busy / restarting
                last_err = repr(exc)
            if time.monotonic() > deadline:
                raise MtaError(f"MTA not ready within {timeout}s (queue {queue!r} "
                               f"{'consumed' if require_consumer else 'declared'}?) {last_err}"
                               f"\n--- log tail:\n{self.log_tail()}")
            time.sleep(0.2)

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)

    def terminate(self, timeout: float = 30.0) -> Optional[int]:
        """SIGTERM, wait up to ``timeout`` s (then SIGKILL); returns the exit code."""
        if self.proc is None:
            return self.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._killpg()
                self.proc.wait(10)
                with open(self.log_path, "ab") as log:
                    log.write(f"\n=== did not exit within {timeout}s of SIGTERM: killed\n".encode())
        self._killpg()          # helpers it may have left behind in its session
        self.returncode = self.proc.returncode
        _LIVE.discard(self)
        return self.returncode

    def kill9(self) -> None:
        """SIGKILL the MTA (and anything in its session), as a crash would."""
        if self.proc is None:
            return
        self._killpg()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self.returncode = self.proc.returncode
        _LIVE.discard(self)

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        if self.proc is None:
            return None
        self.returncode = self.proc.wait(timeout)
        return self.returncode

    def _killpg(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
