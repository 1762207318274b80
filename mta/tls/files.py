"""TLS-RPT reports on disk: one JSON file per UTC day and recipient domain (RFC 8460 §4
format), `<rules file>.tlsrpt/<day>_<domain>.json`, rewritten whole (write, then rename)
at most every `FLUSH` seconds while the day's counts change, so a crash loses at most
that much (a process that exits writes them then). A restart goes on counting the day
from the file it finds. A process of
`mta run --processes N` counts in files of its own (`<day>_<domain>.<node>.json`): each
rewrites its files whole, so two must never share one."""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import threading

from mta.clock import Clock
from mta.tls.report import DayReports, day_of

log = logging.getLogger("mta.tls")

FLUSH = 10.0  # seconds between writes of a changing day's files


class ReportFiles:
    def __init__(self, directory: str, organization: str, clock: Clock, node: str | None = None,
                 sending_ip: str | None = None):
        self.directory = directory
        self._sending_ip = sending_ip  # smtp.bind: the address every session comes from
        self._suffix = f".{node}" if node else ""
        self._organization = organization
        self._clock = clock
        self._wall = clock.wall
        self._day = DayReports(day_of(clock.wall()))
        self._dirty: set[str] = set()
        self._flushed = clock.wall()
        self._writing: asyncio.Task | None = None
        self._timer: asyncio.TimerHandle | None = None
        atexit.register(self.flush)  # a stopped MTA writes what its last seconds counted

    def path(self, day: str, domain: str) -> str:
        return os.path.join(self.directory, f"{day}_{domain}{self._suffix}.json")

    def count(self, domain: str, policy: dict, failure: str | None, mx: str | None, ip: str | None) -> None:
        now = self._wall()
        day = day_of(now)
        if day != self._day.day:
            self._write_out(self._day, set(self._dirty))
            self._day, self._dirty = DayReports(day), set()
        if domain not in self._day.domains:
            self._resume(domain)
        self._day.count(domain, policy, failure, mx, ip)
        self._dirty.add(domain)
        if self._timer is None:
            try:
                self._timer = self._clock.call_at(self._clock.now() + max(0.0, FLUSH - (now - self._flushed)), self.flush)
            except RuntimeError:  # no loop (a test): written at once
                self.flush()

    def flush(self) -> None:
        """Write the changed files now (off the event loop)."""
        self._timer = None
        self._flushed = self._wall()
        dirty, self._dirty = self._dirty, set()
        if dirty:
            self._write_out(self._day, dirty)

    def _resume(self, domain: str) -> None:
        try:
            with open(self.path(self._day.day, domain), encoding="utf-8") as fh:
                earlier = DayReports.merged(self._day.day, domain, json.load(fh))
            self._day.domains[domain] = earlier.domains.get(domain, {})
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("TLS-RPT report of %s for %s not read (%s): counting starts again", domain, self._day.day, exc)

    def _write_out(self, day: DayReports, domains: set[str]) -> None:
        files = {self.path(day.day, d): json.dumps(day.document(d, self._organization, self._sending_ip), indent=1)
                 for d in domains}
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test, a shutdown): write here
            _write_files(self.directory, files)
            return
        self._writing = loop.create_task(asyncio.to_thread(_write_files, self.directory, files))
        self._writing.add_done_callback(self._written)

    def _written(self, task: asyncio.Task) -> None:
        self._writing = None
        if not task.cancelled() and task.exception() is not None:
            log.warning("TLS-RPT reports not written: %s", task.exception())


def _write_files(directory: str, files: dict[str, str]) -> None:
    os.makedirs(directory, exist_ok=True)
    for path, text in files.items():
        temporary = f"{path}.{threading.get_ident()}.tmp"  # two writes of a day never share one
        with open(temporary, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(temporary, path)
