"""How many SMTP connections the whole process may hold: one budget over every destination.

Theory of operation. Each destination has its own connection window (shaper.window); the
budget caps their sum, so that thousands of destinations each wanting a connection never
run the process out of file descriptors (EMFILE). A slot is held from the moment a
connection worker is started (before it connects) until the worker has closed its session.

* A destination that wants another connection takes a slot at once when the budget has
  room and nobody is waiting; otherwise it waits in line, once, however much mail it has
  queued. Waiting is not a delivery attempt and not a failure: nothing is deferred and
  the destination is not paused.
* Freed slots go to waiters in this order: single-lane mail first; then destinations
  holding no connection at all; then the rest, first come first served. A destination
  with several connections never keeps one without any waiting behind it.
* The last `reserve` slots are for the single lane: bulk waits once the budget has fewer
  than that many free, so a password reset finds a slot even when bulk mail fills the
  rest.
* When waiters cannot all be served, `shortfall` says how many idle connections (kept
  open for `idle_timeout`) the shell should close to make room, least recently used
  first, counting those it is already closing. `should_yield` tells a destination with
  more than one connection to give one back at its next reconnect while a destination
  without any (or single mail) waits, so busy destinations cannot keep the budget forever.

The default size comes from the file-descriptor limit (RLIMIT_NOFILE) less a reserve for
what else the process opens: the broker connections, DNS queries, metrics scrapes, log
files, the DKIM signing pool's pipes, Python's own files (`fd_reserve`).

Pure: no I/O, no clock. Keys are destination keys; the shell maps them to destinations.
"""

from __future__ import annotations

import heapq

__all__ = ["ConnectionBudget", "budget_limit", "fd_reserve", "single_reserve",
           "FD_RESERVE_MIN", "UNLIMITED_FDS_BUDGET"]

# Descriptors kept for everything but SMTP connections, at least: up to 64 DNS queries in
# flight (mta.routing.mx.MAX_QUERIES), the two broker connections, metrics scrapes, log
# files, the event loop's and Python's own (the DKIM signing pool's sockets come on top:
# fd_reserve).
FD_RESERVE_MIN = 128
UNLIMITED_FDS_BUDGET = 100_000  # connections when the process has no descriptor limit

SINGLE, STARVED, MORE = 0, 1, 2  # waiting classes, served in this order


def fd_reserve(nofile: int, dkim_workers: int = 0) -> int:
    """Descriptors left for the rest of the process: a tenth of the limit, at least
    FD_RESERVE_MIN (broker, DNS bursts, metrics, logs, Python's own) and two per DKIM
    signing worker (one socket each, twice while a reload replaces the pool), at most half
    of it (a tiny limit still leaves connections)."""
    return min(max(FD_RESERVE_MIN + 2 * dkim_workers, nofile // 10), nofile // 2)


def budget_limit(nofile: int | None, configured: int | None, dkim_workers: int = 0) -> tuple[int, str | None]:
    """The connection budget: `configured` (smtp.max_connections), else what the
    descriptor limit `nofile` allows (None: no limit). A configured value above what the
    limit allows is clamped to it, and the second value says so (the operator's number
    cannot be kept: the process would fail with EMFILE instead)."""
    if nofile is None:
        return (configured or UNLIMITED_FDS_BUDGET), None
    reserve = fd_reserve(nofile, dkim_workers)
    allowed = max(1, nofile - reserve)
    if configured is None:
        return allowed, None
    if configured > allowed:
        return allowed, (f"smtp.max_connections {configured} is more than the file-descriptor limit "
                         f"{nofile} allows ({allowed}, keeping {reserve} for the rest of the process); "
                         f"using {allowed}")
    return configured, None


def single_reserve(limit: int) -> int:
    """Slots bulk leaves free for the single lane: 2 % of the budget, at least one (none
    when the budget is a single connection)."""
    return min(max(1, limit // 50), limit - 1)


class ConnectionBudget:
    """Slots for SMTP connections, shared by all destinations. Not thread-safe."""

    __slots__ = ("limit", "reserve", "in_use", "_held", "_waiting", "_queues", "_counts", "_seq",
                 "_closing", "closing")

    def __init__(self, limit: int, reserve: int | None = None) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"connection budget must be an integer >= 1, got {limit!r}")
        self.limit = limit
        self.reserve = single_reserve(limit) if reserve is None else max(0, min(reserve, limit - 1))
        self.in_use = 0
        self._held: dict[str, int] = {}
        self._waiting: dict[str, tuple[int, int]] = {}  # key -> (class, sequence number)
        self._queues: tuple[list, list, list] = ([], [], [])  # heaps of (sequence, key); stale entries skipped
        self._counts = [0, 0, 0]
        self._seq = 0
        self._closing: dict[str, int] = {}  # idle connections being closed to make room, by key
        self.closing = 0

    # ---- what it holds

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def is_waiting(self, key: str) -> bool:
        return key in self._waiting

    def _cap(self, cls: int) -> int:
        return self.limit if cls == SINGLE else self.limit - self.reserve

    # ---- taking and giving back

    def try_acquire(self, key: str, single: bool = False) -> bool:
        """A slot now, if there is room for the lane and nobody it would overtake waits."""
        if single:
            if self.in_use >= self.limit or self._counts[SINGLE]:
                return False
        elif self.in_use >= self.limit - self.reserve or self._waiting:
            return False
        self._take(key)
        return True

    def wait(self, key: str, single: bool = False) -> None:
        """Wait in line for a slot (a key waits once; single mail moves it up the line)."""
        current = self._waiting.get(key)
        if current is not None:
            if single and current[0] != SINGLE:
                self._move(key, SINGLE, current)
            return
        self._seq += 1
        cls = SINGLE if single else (STARVED if not self._held.get(key) else MORE)
        self._enqueue(key, cls, self._seq)

    def grant(self) -> str | None:
        """The next waiter that may have a slot now, with the slot taken for it; None when
        nobody waits or there is no room. The caller gives it back with `release` if the
        destination no longer wants it."""
        for cls in (SINGLE, STARVED, MORE):
            if self.in_use >= self._cap(cls):
                if cls == SINGLE:
                    return None
                continue
            key = self._head(cls)
            if key is None:
                continue
            heapq.heappop(self._queues[cls])
            del self._waiting[key]
            self._counts[cls] -= 1
            self._take(key)
            return key
        return None

    def release(self, key: str) -> None:
        """A slot of `key` is free again (its worker ended, or it did not want a grant)."""
        held = self._held.get(key, 0)
        if held <= 0 or self.in_use <= 0:
            raise RuntimeError(f"release({key!r}) without a slot: accounting is broken")
        self.in_use -= 1
        if held == 1:
            del self._held[key]
            current = self._waiting.get(key)
            if current is not None and current[0] == MORE:  # now it has none: move up
                self._move(key, STARVED, current)
        else:
            self._held[key] = held - 1
        closing = self._closing.get(key)
        if closing:
            self.closing -= 1
            if closing == 1:
                del self._closing[key]
            else:
                self._closing[key] = closing - 1

    # ---- making room

    def shortfall(self) -> int:
        """Idle connections to close so that every waiter can have a slot, less those
        already being closed."""
        singles = self._counts[SINGLE]
        bulk = self._counts[STARVED] + self._counts[MORE]
        need = max(0, self.in_use + singles - self.limit)
        if bulk:
            need = max(need, self.in_use + singles + bulk - (self.limit - self.reserve))
        return max(0, min(need, singles + bulk) - self.closing)

    def closing_idle(self, key: str) -> None:
        """The shell is closing an idle connection of `key` to make room."""
        self._closing[key] = self._closing.get(key, 0) + 1
        self.closing += 1

    def should_yield(self, key: str) -> bool:
        """Whether `key`, about to open a connection, should give its slot back instead:
        it holds others, and single mail or a destination without any connection waits."""
        if self._held.get(key, 0) < 2:
            return False
        urgent = self._counts[SINGLE] + self._counts[STARVED]
        own = self._waiting.get(key)
        if own is not None and own[0] != MORE:
            urgent -= 1
        return urgent > 0

    # ---- inside

    def _take(self, key: str) -> None:
        self.in_use += 1
        self._held[key] = self._held.get(key, 0) + 1

    def _enqueue(self, key: str, cls: int, seq: int) -> None:
        self._waiting[key] = (cls, seq)
        self._counts[cls] += 1
        heapq.heappush(self._queues[cls], (seq, key))

    def _move(self, key: str, cls: int, current: tuple[int, int]) -> None:
        """Into another class, keeping its place in time (the old heap entry goes stale)."""
        self._counts[current[0]] -= 1
        self._enqueue(key, cls, current[1])

    def _head(self, cls: int) -> str | None:
        queue = self._queues[cls]
        while queue:
            seq, key = queue[0]
            if self._waiting.get(key) == (cls, seq):
                return key
            heapq.heappop(queue)  # stale: granted or moved since
        return None

    def __repr__(self) -> str:
        return (f"ConnectionBudget(limit={self.limit}, reserve={self.reserve}, in_use={self.in_use}, "
                f"waiting={self.waiting}, closing={self.closing})")
