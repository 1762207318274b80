"""How many connections one destination may have open: a feedback window.

Theory of operation (after Postfix's destination concurrency feedback): the
operator's ``connection_limit`` is a ceiling, not a starting point. A
destination starts with a small window (``start``, 2 by default; Postfix uses
5) and earns more: after ``allowed`` consecutive successful deliveries the
window grows by one (additive increase, so growing from w to w + 1 costs w
successes). A pushback (a 421 greeting, a refused or dropped connection)
halves it (multiplicative decrease, never below 1). A receiver that is coping
gets the full limit within a few hundred messages; one that is not feels the
pressure drop at once. This is also the "safe ramp back up" after a throttle:
lowering the limit clamps the window, raising it does not hand out the new
limit at once.

A receiver that says exactly what is wrong ("421 too many connections") is
believed: the window drops to one below the connections that were open when it
said so, and that level is remembered. Growing past a remembered level waits
``RELEARN_AFTER`` seconds since the receiver last said it, so a receiver that
takes 3 sessions is served with 3 and asked about a 4th every few minutes, not
every few messages (a count of successes would ask more often the faster the
mail flows). A destination that stopped answering altogether is ``collapse``d to a
single connection: the probe that tells when it is back.

The window only decides about *new* connections. Lowering it (pushback,
``set_limit``) leaves connections already open alone: ``excess`` tells the
engine how many to close at their next idle point, and ``try_open`` refuses
until ``in_use`` has dropped below the window again. So ``in_use`` never
exceeds the limit through this object; it can only be left above a limit that
was lowered under it.
"""

from __future__ import annotations

__all__ = ["ConnectionWindow"]

RELEARN_AFTER = 300.0  # seconds before growing past a level the receiver refused


def _check_limit(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


class ConnectionWindow:
    """Concurrency accounting for one destination. Not thread-safe: it lives
    on the engine's event loop like everything else in ``shaper``."""

    __slots__ = ("_allowed", "_in_use", "_learned", "_learned_at", "_limit", "_successes")

    def __init__(self, limit: int, start: int = 2) -> None:
        self._limit = _check_limit("connection limit", limit)
        self._allowed = min(_check_limit("start", start), limit)
        self._in_use = 0
        self._successes = 0  # consecutive, since the window last changed
        self._learned: int | None = None  # the most the receiver said it takes
        self._learned_at = 0.0

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def allowed(self) -> int:
        """The current window, in ``[1, limit]``."""
        return self._allowed

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def available(self) -> int:
        """How many more connections ``try_open`` would grant right now."""
        return max(0, self._allowed - self._in_use)

    @property
    def excess(self) -> int:
        """Open connections beyond the window: close them when they go idle."""
        return max(0, self._in_use - self._allowed)

    def try_open(self) -> bool:
        """Claim a slot for a new connection; False when the window is full."""
        if self._in_use >= self._allowed:
            return False
        self._in_use += 1
        return True

    def closed(self) -> None:
        """A connection claimed with ``try_open`` is gone, for whatever reason."""
        if self._in_use == 0:
            raise RuntimeError("closed() without an open connection: accounting is broken")
        self._in_use -= 1

    @property
    def learned(self) -> int | None:
        """The concurrency the receiver asked for with "too many connections", if any."""
        return self._learned

    def on_success(self, now: float = 0.0) -> None:
        """A delivery over one of these connections succeeded."""
        self._successes += 1
        if self._learned is not None and self._allowed >= self._learned \
                and now - self._learned_at < RELEARN_AFTER:
            return
        if self._successes >= self._allowed:
            self._successes = 0
            if self._allowed < self._limit:
                self._allowed += 1

    def on_pushback(self) -> None:
        """The destination refused or dropped us, or said 421: back off."""
        self._successes = 0
        self._allowed = max(1, self._allowed // 2)

    def on_too_many(self, now: float = 0.0) -> None:
        """The receiver said "too many connections" while ``in_use`` were open
        (the refused one included): keep one fewer, and remember it."""
        self._successes = 0
        self._allowed = max(1, min(self._allowed, self._in_use - 1))
        self._learned = self._allowed
        self._learned_at = now

    def collapse(self) -> None:
        """Nothing answered: one connection at a time until something does."""
        self._successes = 0
        self._allowed = 1

    def set_limit(self, limit: int) -> None:
        """A throttle, its end, or a reload. Shrinks the window at once, lets it
        grow back by feedback (a throttle ending must not release a wave)."""
        self._limit = _check_limit("connection limit", limit)
        if self._allowed > limit:
            self._allowed = limit
            self._successes = 0

    def __repr__(self) -> str:
        return (
            f"ConnectionWindow(limit={self._limit}, allowed={self._allowed}, "
            f"in_use={self._in_use})"
        )
