"""A delivery attempt's deadline over the SMTP steps of its transaction.

One timer per worker, moved lazily: a deadline per message, a timer only when one runs out.
When a job's deadline has passed, the timer cancels the worker's step in progress and the
worker turns the cancellation into that job's outcome (`expired`); a cancellation that is
not the watchdog's (shutdown) goes on up.
"""

from __future__ import annotations

import asyncio

from mta.clock import Clock
from mta.smtp.client import Reply

__all__ = ["NEVER", "POLL_TURNS", "Watchdog", "answered", "polled"]

NEVER = float("inf")  # a watchdog's deadline while disarmed


class Watchdog:
    """A delivery attempt's deadline over its transaction: one timer per worker, moved
    lazily (a deadline per message, a timer only when one runs out), that cancels the
    worker's step in progress when the job's deadline has passed. Armed only around the
    SMTP steps of a transaction; the opening of a session is bounded by cutting its
    timeouts instead (a session half opened must be closed by whoever opened it).

    A message's content may carry the next transaction's commands (RFC 2920): the reply
    to its end of data, once in (`dot_read`, the session's hook), is its outcome whatever
    happens after it, and the replies read next are the next message's, under that
    message's deadline from then on."""

    __slots__ = ("_task", "_clock", "deadline", "_handle", "fired", "dot", "_then", "then")

    def __init__(self, clock: Clock) -> None:
        self._task = asyncio.current_task()
        self._clock = clock
        self.deadline = NEVER
        self._handle: asyncio.TimerHandle | None = None
        self.fired = False
        self.dot: Reply | None = None  # the reply to the end of data of the message being finished
        self._then: float | None = None  # seconds the transaction pipelined behind it has, from that reply
        self.then = NEVER  # its deadline, once that reply is in

    def arm(self, deadline: float) -> None:
        self.deadline = deadline
        if self._handle is None:
            self._handle = self._clock.call_at(deadline, self._fire)

    def disarm(self) -> None:
        self.deadline = NEVER

    def await_dot(self, deadline: float, then: float | None) -> None:
        """Armed for a message's content: ``deadline`` until the reply to its end of data;
        ``then``: seconds the transaction pipelined behind it has from that reply on (None:
        nothing is)."""
        self.dot = None
        self._then = then
        self.then = NEVER
        self.deadline = deadline  # arm, inline: once per message
        if self._handle is None:
            self._handle = self._clock.call_at(deadline, self._fire)

    def dot_read(self, reply: Reply) -> None:
        """The reply to the end of data is in: the message's outcome, and from now on the
        deadline in force is the pipelined transaction's (the timer moves lazily)."""
        self.dot = reply
        if self._then is not None and self.deadline != NEVER:
            self.then = self.deadline = self._clock.now() + self._then

    def _fire(self) -> None:
        self._handle = None
        deadline = self.deadline
        if deadline == NEVER:
            return
        if deadline > self._clock.now():  # a later job's deadline by now
            self._handle = self._clock.call_at(deadline, self._fire)
            return
        self.fired = True
        self._task.cancel()

    def expired(self) -> bool:
        """After a CancelledError: True (and the cancellation withdrawn) when it was this
        deadline's, False when someone else cancelled the worker (shutdown)."""
        if not self.fired:
            return False
        self.fired = False
        self._task.uncancel()
        return True

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


POLL_TURNS = 2  # turns of the event loop a shutdown gives the sockets before it calls an outcome unknown


def answered(watchdog: Watchdog, session) -> Reply | None:
    """The reply to the end of data of the message whose content is out, when a deadline or
    a shutdown cut in: read by the session, or arrived and not yet read. It is the message's
    outcome either way: the receiver has the message."""
    return watchdog.dot or session.unread_dot()


async def polled(watchdog: Watchdog, session) -> Reply | None:
    """`answered` after the event loop has read what the sockets hold (POLL_TURNS turns): a
    shutdown that cancels the worker right after the receiver's reply to the end of data
    reached this machine, before the loop read it, must still take it as the outcome, or the
    message is reported interrupted and sent again."""
    try:
        for _ in range(POLL_TURNS):
            await watchdog._clock.sleep(0)  # a turn of the loop, through the clock as all waits
    except asyncio.CancelledError:  # cancelled again: what has been read is all there is
        pass
    return answered(watchdog, session)
