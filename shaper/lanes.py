"""A destination's ready mail in two lanes, and the workers idle on its sessions.

Theory of operation: single mail (a password reset, a receipt) goes first in every
destination; bulk mail takes the rest. `Lanes` holds the two ready queues of one
destination (bulk's takes turns between campaigns, shaper.fair) and counts what its
workers hold:

* ``bulk_busy``: workers holding a bulk job. Bulk may use the whole connection window
  while no single mail is about; from the first single message until `SINGLE_RECENT`
  seconds after the last (``single_seen``), it leaves ``single_connections`` of the window
  to the single lane (`bulk_cap`), so a backlog of bulk never puts single mail behind it.
* ``unpaced``: jobs taken without a rate slot yet. A worker's next job has its slot booked
  as it is taken (shaper.destination.DestinationCore.next_job), so this is 0 between calls:
  the ready queues alone are what waits for the message rate.

A worker takes single mail first (`take`); a job taken and not sent goes back to the front
of its lane (`put_back`), and `release` ends a bulk job's hold on the window.

`IdleWorkers` is the line of workers waiting for mail on an open session, each until the
end of its ``idle_timeout``. Mail is handed to the oldest one still waiting; one deadline
(`due`) is all a timer needs to watch, and `expire` says which waits ran out. A waiter is
anything with ``done()`` (the shell's futures); nothing here knows more of it. Time comes
in as ``now``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from shaper.fair import FairQueue

__all__ = ["SINGLE_RECENT", "IdleWorkers", "Lanes", "Waiter"]

SINGLE_RECENT = 30.0  # seconds the single lane's reserve outlives its last message


class Lanes:
    __slots__ = ("single", "bulk", "bulk_busy", "unpaced", "single_seen")

    def __init__(self, campaign: Callable[[Any], Hashable]) -> None:
        self.single: deque = deque()
        self.bulk: FairQueue = FairQueue(campaign)
        self.bulk_busy = 0  # workers holding a bulk job
        self.unpaced = 0  # workers holding a job that has no rate slot yet
        self.single_seen: float | None = None  # last single-lane message; None: long ago

    @property
    def queued(self) -> int:
        return len(self.single) + len(self.bulk)

    def bulk_cap(self, allowed: int, single_connections: int) -> int:
        """How many workers may hold bulk jobs: the window (``allowed``), less the single
        lane's reserve while single mail is about (never all of it, never below one)."""
        if self.single_seen is None:
            return allowed
        return max(1, allowed - min(single_connections, allowed - 1))

    def single_about(self, now: float, arriving: bool) -> bool:
        """Keep the single lane's reserve while single mail comes (``arriving``), drop it
        after a quiet `SINGLE_RECENT` seconds; True when the reserve began or ended (the
        lanes' shares of the rate change)."""
        seen = self.single_seen
        if arriving:
            self.single_seen = now
            return seen is None
        if seen is not None and now - seen > SINGLE_RECENT:
            self.single_seen = None
            return True
        return False

    def take(self, allowed: int, single_connections: int) -> Any | None:
        """The next job for a worker, single first; bulk only within its cap (`bulk_cap`).
        It counts as unpaced until its rate slot is booked. None: nothing for this worker."""
        if self.single:
            self.unpaced += 1
            return self.single.popleft()
        if self.bulk and self.bulk_busy < self.bulk_cap(allowed, single_connections):
            self.bulk_busy += 1
            self.unpaced += 1
            return self.bulk.popleft()
        return None

    def put_back(self, job: Any) -> None:
        """A job taken from its lane goes back to its front."""
        (self.single if job.lane == "single" else self.bulk).appendleft(job)

    def release(self, job: Any) -> None:
        """A worker is done with ``job`` (sent, held, or put back)."""
        if job.lane != "single":
            self.bulk_busy -= 1

    def drain(self) -> list:
        """Everything ready, single first; the lanes are empty after."""
        jobs = list(self.single) + list(self.bulk)
        self.single.clear()
        self.bulk.clear()
        return jobs


class Waiter(Protocol):
    def done(self) -> bool: ...


class IdleWorkers:
    """Workers waiting for mail, oldest first, each with the deadline of its wait."""

    __slots__ = ("_line", "due")

    def __init__(self) -> None:
        self._line: deque[tuple[float, Waiter]] = deque()
        self.due: float | None = None  # the earliest deadline a timer watches; None: none does

    def __bool__(self) -> bool:
        return bool(self._line)

    def add(self, deadline: float, waiter: Waiter) -> bool:
        """One more waits until ``deadline``; True when the timer must move to it (none is
        set, or the one set is later)."""
        self._line.append((deadline, waiter))
        if self.due is None or self.due > deadline:
            self.due = deadline
            return True
        return False

    def pop_waiting(self) -> Waiter | None:
        """The oldest one still waiting, out of the line (those done are dropped)."""
        line = self._line
        while line:
            _, waiter = line.popleft()
            if not waiter.done():
                return waiter
        return None

    def waiting(self) -> int:
        # A copy first: a metrics scrape counts on its own thread while the loop changes the line.
        return sum(not waiter.done() for _, waiter in list(self._line))

    def clear(self) -> list[Waiter]:
        """All those still waiting; the line is empty after."""
        waiting = [waiter for _, waiter in self._line if not waiter.done()]
        self._line.clear()
        return waiting

    def expire(self, now: float) -> list[Waiter]:
        """The timer fired: those still waiting whose deadline has come, out of the line;
        `due` is the next deadline, or None."""
        expired: list[Waiter] = []
        left: deque[tuple[float, Waiter]] = deque()  # at most one per worker
        for deadline, waiter in self._line:
            if waiter.done():
                continue
            if deadline <= now:
                expired.append(waiter)
            else:
                left.append((deadline, waiter))
        self._line = left
        self.due = min(deadline for deadline, _ in left) if left else None
        return expired
