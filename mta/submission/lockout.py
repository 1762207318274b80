"""Failed logins cost the one who fails: budgets per client address and per user name,
kept across connections (SPEC §7).

Failures are counted, not logins: a client that logs in right a thousand times costs
nothing. A login being checked counts as a failure until it passes, so a thousand
connections trying at once get no more checks than one after another. An address that
failed `ADDRESS_BUDGET` times in `WINDOW` is refused AUTH until its failures age out (421
4.7.0, the connection closed), without its password being looked at. A user name that
failed `USER_BUDGET` times (from anywhere) is refused only to addresses that have failed
before: a guesser spread over many addresses gets one try per address, and the
application logging in from its usual address, which never fails, is not locked out by
someone else's guessing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

ADDRESS_BUDGET = 10
USER_BUDGET = 30
WINDOW = 900.0  # seconds a failure is remembered
MAX_KEYS = 100_000  # addresses and names remembered at most; the oldest go first


class Lockout:
    def __init__(self, now: Callable[[], float], *, address_budget: int = ADDRESS_BUDGET,
                 user_budget: int = USER_BUDGET, window: float = WINDOW):
        self._now = now
        self.address_budget = address_budget
        self.user_budget = user_budget
        self.window = window
        self._addresses: dict[str, deque[float]] = {}
        self._users: dict[str, deque[float]] = {}

    def refused(self, address: str, username: str | None) -> str | None:
        """Why this address may not try now (None: it may)."""
        now = self._now()
        failed_here = self._recent(self._addresses, address, now)
        if failed_here >= self.address_budget:
            return "address"
        if username is not None and failed_here and self._recent(self._users, username, now) >= self.user_budget:
            return "user"
        return None

    def failed(self, address: str, username: str | None) -> None:
        """A failure, or a login about to be checked (`passed` takes it back)."""
        now = self._now()
        self._add(self._addresses, address, now)
        if username is not None:
            self._add(self._users, username, now)

    def passed(self, address: str, username: str) -> None:
        """The login counted by `failed` before its check was right: not a failure."""
        for table, key in ((self._addresses, address), (self._users, username)):
            times = table.get(key)
            if times:
                times.pop()

    def _recent(self, table: dict[str, deque[float]], key: str, now: float) -> int:
        times = table.get(key)
        if times is None:
            return 0
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del table[key]
            return 0
        return len(times)

    def _add(self, table: dict[str, deque[float]], key: str, now: float) -> None:
        times = table.get(key)
        if times is None:
            if len(table) >= MAX_KEYS:
                del table[next(iter(table))]
            times = table[key] = deque(maxlen=max(self.address_budget, self.user_budget) + 1)
        times.append(now)

    def failures(self, address: str) -> int:
        return self._recent(self._addresses, address, self._now())
