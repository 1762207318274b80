"""The process-wide budget of outbound SMTP connections, carried out (shaper.budget decides).

At start the soft file-descriptor limit (RLIMIT_NOFILE) is raised to the hard limit, as
daemons do, and the budget is derived from it (or taken from `smtp.max_connections`,
clamped with a warning when the limit cannot carry it). The budget is logged at start.

Destinations ask for a slot before they start a connection worker (`acquire`); one that
must wait is called back (`on_grant`) when a slot is its turn: no task waits and no job
is taken from its queue meanwhile. A worker that waits idle for mail registers its wait
(`idle`/`busy`); while destinations wait for slots, the least recently used idle
connections are closed to make room. Everything runs on the engine's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from shaper.budget import ConnectionBudget, budget_limit, fd_reserve

log = logging.getLogger("mta.budget")


def raise_fd_limit() -> int | None:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in
    force (None: unlimited, or a platform without the resource module)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # e.g. a hard limit above the kernel's nr_open
            log.warning("could not raise the file-descriptor limit from %d to %d (%s); keeping %d",
                        soft, hard, exc, soft)
    return None if soft == resource.RLIM_INFINITY else soft


class Budget:
    """Connection slots shared by every destination of the process."""

    def __init__(self, limit: int, reserve: int | None = None):
        self.core = ConnectionBudget(limit, reserve)
        self._on_grant: dict[str, Callable[[], bool]] = {}
        self._idle: dict[asyncio.Future, str] = {}  # insertion order: least recently used first
        self.waits = 0  # times a destination had to wait for a slot
        self.evictions = 0  # idle connections closed to make room for another destination
        self.yields = 0  # reconnects given up so that a destination without a connection gets one

    @classmethod
    def from_config(cls, max_connections: int | None, listening: int = 0) -> Budget:
        """`listening`: client connections the listeners may hold (submission and inbound),
        kept out of it (at most half the file-descriptor limit)."""
        nofile = raise_fd_limit()
        if nofile is not None and listening:
            nofile -= min(listening, nofile // 2)
        dkim_workers = max(1, os.cpu_count() or 1)  # mta.dkim.signer's pool size, should DKIM be (re)loaded
        limit, warning = budget_limit(nofile, max_connections, dkim_workers)
        if warning:
            log.warning("%s", warning)
        budget = cls(limit)
        if nofile is None:
            log.info("connection budget: %d SMTP connections (no file-descriptor limit); %d kept for "
                     "the single lane", limit, budget.core.reserve)
        else:
            log.info("connection budget: %d SMTP connections (file-descriptor limit %d, %d descriptors "
                     "kept for the broker, DNS, metrics, logs and DKIM); %d kept for the single lane",
                     limit, nofile, fd_reserve(nofile, dkim_workers), budget.core.reserve)
        return budget

    @property
    def limit(self) -> int:
        return self.core.limit

    @property
    def in_use(self) -> int:
        return self.core.in_use

    @property
    def waiting(self) -> int:
        return self.core.waiting

    def acquire(self, key: str, single: bool, on_grant: Callable[[], bool]) -> bool:
        """A slot for `key` now (True), or its place in line: `on_grant` is called when a
        slot is its turn and returns whether it took it."""
        if self.core.try_acquire(key, single):
            return True
        if not self.core.is_waiting(key):
            self.waits += 1
        self.core.wait(key, single)
        self._on_grant[key] = on_grant
        self._make_room()
        return False

    def release(self, key: str) -> None:
        """A worker of `key` ended: its connection is closed. The slot goes to the next in line."""
        self.core.release(key)
        if self.core.waiting:
            self._dispatch()

    def should_yield(self, key: str) -> bool:
        if self.core.should_yield(key):
            self.yields += 1
            return True
        return False

    def idle(self, waiter: asyncio.Future, key: str) -> None:
        """A connection of `key` waits idle for mail on `waiter` (resolved with None to close it)."""
        self._idle[waiter] = key
        if self.core.waiting:
            self._make_room()

    def busy(self, waiter: asyncio.Future) -> None:
        self._idle.pop(waiter, None)

    def _dispatch(self) -> None:
        while (key := self.core.grant()) is not None:
            on_grant = self._on_grant.pop(key, None)
            taken = False
            try:
                taken = on_grant is not None and on_grant()
            except Exception:  # a destination's bug must not stop the line behind it
                log.exception("%s: starting a connection with its budget slot failed; the slot goes to the next", key)
            if not taken:
                self.core.release(key)
        self._make_room()

    def _make_room(self) -> None:
        """Close the least recently used idle connections the waiters need."""
        need = self.core.shortfall()
        while need > 0 and self._idle:
            waiter = next(iter(self._idle))
            key = self._idle.pop(waiter)
            if waiter.done():
                continue
            waiter.set_result(None)  # the worker closes its session and ends; its slot comes back
            self.core.closing_idle(key)
            self.evictions += 1
            need -= 1
