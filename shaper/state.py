"""The state of one destination: normal, backoff or paused.

Theory of operation (PowerMTA's two modes plus an operator's pause):

* ``normal``: the destination runs on its configured limits.
* ``backoff``: a reply pattern (``action: throttle``) put it on reduced limits
  until ``until``. Mail still flows, slowly. Repeated signals extend the
  backoff, never shorten it. A success does not end it unless the backoff was
  entered with ``clear_on_success``: a receiver that said "too fast" accepts
  mail at the throttled pace, and lifting the throttle on the first success
  would just make it say "too fast" again.
* ``paused``: nothing is sent. Either an operator (``mta pause``, usually with
  no end) or a reply pattern (``action: suspend``, e.g. Yahoo TSS04 for 2 h).
  A backoff that was running, or that arrives while paused (a reply of a
  delivery still in flight), is remembered and resumes when the pause ends, if
  it has not run out by then; a pause must not wipe out a throttle.

Time only moves through ``now`` arguments: ``tick(now)`` ends what has run out,
and the engine calls it before consulting ``mode`` (``until`` says when the
next automatic change is due). Every legal move is listed in ``TRANSITIONS``
and made by ``_move``, which checks it; anything else raises
``IllegalTransition``. Methods return the last ``Transition`` they made (for
the log line and the metrics; ``backoff`` and ``pause`` first end what has run
out, like ``tick``) or None when nothing changed at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

__all__ = ["TRANSITIONS", "DestinationState", "Event", "IllegalTransition", "Mode", "Transition"]


class Mode(StrEnum):
    NORMAL = "normal"
    BACKOFF = "backoff"
    PAUSED = "paused"


class Event(StrEnum):
    BACKOFF = "backoff"  # a throttle signal
    PAUSE = "pause"  # operator, or a suspend signal
    RESUME = "resume"  # operator
    EXPIRE = "expire"  # ``until`` has passed
    SUCCESS = "success"  # a delivery succeeded


_N, _B, _P = Mode.NORMAL, Mode.BACKOFF, Mode.PAUSED
# (mode, event) -> the modes that event may lead to. Absent pairs are illegal.
TRANSITIONS = MappingProxyType(
    {
        (_N, Event.BACKOFF): frozenset({_B}),
        (_B, Event.BACKOFF): frozenset({_B}),  # extends
        (_P, Event.BACKOFF): frozenset({_P}),  # remembered for after the pause
        (_N, Event.PAUSE): frozenset({_P}),
        (_B, Event.PAUSE): frozenset({_P}),  # the backoff is remembered
        (_P, Event.PAUSE): frozenset({_P}),  # extends
        (_P, Event.RESUME): frozenset({_N, _B}),  # back to a remembered backoff
        (_B, Event.RESUME): frozenset({_N}),  # an operator lifts a throttle
        (_B, Event.EXPIRE): frozenset({_N}),
        (_P, Event.EXPIRE): frozenset({_N, _B}),
        (_B, Event.SUCCESS): frozenset({_N}),  # only with clear_on_success
    }
)


class IllegalTransition(Exception):
    def __init__(self, mode: Mode, event: Event, target: Mode | None = None) -> None:
        to = "" if target is None else f" to {target}"
        super().__init__(f"illegal transition: {event} while {mode}{to}")
        self.mode = mode
        self.event = event
        self.target = target


@dataclass(frozen=True, slots=True)
class Transition:
    at: float
    event: Event
    source: Mode
    target: Mode
    reason: str


@dataclass(frozen=True, slots=True)
class _Backoff:
    until: float
    reason: str
    clear_on_success: bool


def _later(a: float | None, b: float | None) -> float | None:
    """The later of two ends, None meaning never."""
    return None if a is None or b is None else max(a, b)


class DestinationState:
    __slots__ = ("_backoff", "last_success", "mode", "reason", "since", "until")

    def __init__(self, now: float = 0.0) -> None:
        self.mode = Mode.NORMAL
        self.since = now
        self.until: float | None = None
        self.reason = ""
        self.last_success: float | None = None
        # The backoff in force (in BACKOFF) or remembered (in PAUSED).
        self._backoff: _Backoff | None = None

    @property
    def sending(self) -> bool:
        return self.mode is not Mode.PAUSED

    def _move(self, now: float, event: Event, target: Mode, reason: str) -> Transition:
        legal = TRANSITIONS.get((self.mode, event))
        if legal is None or target not in legal:
            raise IllegalTransition(self.mode, event, target)
        source = self.mode
        if target is not source:
            self.since = now
        self.mode = target
        self.reason = reason
        if target is Mode.NORMAL:
            self.until = None
            self._backoff = None
        elif target is Mode.BACKOFF:
            assert self._backoff is not None
            self.until = self._backoff.until
        return Transition(now, event, source, target, reason)

    def _leave_pause(self, now: float, event: Event, reason: str) -> Transition:
        backoff = self._backoff
        if backoff is not None and backoff.until > now:
            return self._move(now, event, Mode.BACKOFF, backoff.reason)
        return self._move(now, event, Mode.NORMAL, reason)

    def tick(self, now: float) -> Transition | None:
        """End a backoff or a pause whose time has come."""
        if self.until is None or self.until > now:
            return None
        if self.mode is Mode.BACKOFF:
            return self._move(now, Event.EXPIRE, Mode.NORMAL, f"backoff ended ({self.reason})")
        return self._leave_pause(now, Event.EXPIRE, f"pause ended ({self.reason})")

    def backoff(
        self, now: float, until: float, reason: str, *, clear_on_success: bool = False
    ) -> Transition | None:
        """Reduced limits until ``until`` (extends, never shortens, a backoff)."""
        if not until > now:
            raise ValueError(f"backoff until {until!r} is not after now ({now!r})")
        # A backoff that ran out long ago is replaced, not extended; the expiry
        # is reported if it is all that happened.
        expired = self.tick(now)
        old = self._backoff
        if old is not None and old.until >= until:
            return expired
        self._backoff = _Backoff(until, reason, clear_on_success)
        if self.mode is Mode.PAUSED:
            pause_reason = self.reason  # the pause is what still explains the state
            transition = self._move(now, Event.BACKOFF, Mode.PAUSED, reason)
            self.reason = pause_reason
            return transition
        return self._move(now, Event.BACKOFF, Mode.BACKOFF, reason)

    def pause(self, now: float, until: float | None, reason: str) -> Transition | None:
        """Send nothing until ``until``; None means until ``resume``."""
        if until is not None and not until > now:
            raise ValueError(f"pause until {until!r} is not after now ({now!r})")
        expired = self.tick(now)
        if self.mode is Mode.PAUSED:
            longer = _later(self.until, until)
            if longer == self.until:
                return expired
            until = longer
        transition = self._move(now, Event.PAUSE, Mode.PAUSED, reason)
        self.until = until
        return transition

    def resume(self, now: float, reason: str) -> Transition:
        """An operator's resume: ends a pause, or lifts a backoff.
        Raises ``IllegalTransition`` when there is nothing to resume."""
        if self.mode is Mode.PAUSED:
            return self._leave_pause(now, Event.RESUME, reason)
        return self._move(now, Event.RESUME, Mode.NORMAL, reason)

    def on_success(self, now: float) -> Transition | None:
        """A delivery succeeded: recorded, and ends a ``clear_on_success`` backoff."""
        self.last_success = now
        backoff = self._backoff
        if self.mode is Mode.BACKOFF and backoff is not None and backoff.clear_on_success:
            return self._move(now, Event.SUCCESS, Mode.NORMAL, "delivery succeeded")
        return None

    def __repr__(self) -> str:
        return (
            f"DestinationState(mode={self.mode}, since={self.since}, "
            f"until={self.until}, reason={self.reason!r})"
        )
