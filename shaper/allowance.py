"""How much mail a destination may keep in memory, and how long to hold the rest.

Theory of operation: a destination keeps in its ready queue only what it can send soon:
`HORIZON` seconds of its current message rate, and a handful per allowed connection (so a
slow rate still keeps its connections busy) as long as that handful is sent within
`MAX_WAIT`. Everything beyond that is held in a broker delay queue and acknowledged, so that
the prefetch window never fills with one slow destination's mail and no delivery stays
unacknowledged anywhere near RabbitMQ's `consumer_timeout`. The hold is chosen from a few
fixed delays (one delay queue each): the longest that does not exceed the time the backlog
ahead of the message needs to drain at the current rate, so that it is back while there is
still work queued (a later return would leave the connections idle) and is held again at
most once or twice. That backlog includes what was held before it and has not come back
yet (`HeldLedger`), so a long backlog is spread over the delays instead of coming back in
one wave and being held again.

The destinations of one provider drain through its one shared rate
(mta.destinations.share): what they keep in memory together is bounded by that rate
(`shared_fits`: the share's allowance, and sent within `MAX_WAIT` after the slots already
booked), else N domains of a provider would keep N times what it sends soon; the rest is
held by the share's backlog (`shared_hold`).

A paused destination holds everything: until its pause ends when the end is known (never
earlier), and then spread by the same backlog estimate; an open-ended (operator's) pause is looked at
again after a quarter of the time it has lasted so far (at least `PAUSED_MIN`), so a pause
of minutes costs little and one of hours does not cycle its mail every few seconds.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

HORIZON = 10.0  # seconds of sending a destination keeps in memory
PER_CONNECTION = 4  # at least this many per allowed connection...
MAX_WAIT = 15.0  # ...as long as they go out within this many seconds: far below any sane
# consumer_timeout (RabbitMQ's default is 30 min; operators shorten it to a minute or two)
HOLD_DELAYS = (5, 15, 30, 60, 120, 300, 600, 1200)  # seconds; one delay queue per value and lane
PAUSED_MIN = 15.0  # seconds before an open-ended pause's mail is looked at again
RETURN_MARGIN = 1.0  # seconds: held mail should be back this much before its turn


def slow_hold(next_slot: float, queued: int, per_second: float) -> int | None:
    """For a slow destination (a minute or more between messages, say): None when a new
    message would go out within `MAX_WAIT` (after ``next_slot`` seconds until the rate
    allows the next one, and ``queued`` ahead of it), else how long to hold it instead,
    so that not even one message waits in memory for long."""
    expected = next_slot + (queued / per_second if per_second > 0 else MAX_WAIT)
    if expected <= MAX_WAIT:
        return None
    return _at_most(expected - RETURN_MARGIN)


def shared_fits(next_slot: float, queued: int, per_second: float, connections: int) -> bool:
    """Under a provider's share, whose one rate all its destinations drain through: one more
    message fits in memory while the destinations together keep less than the share's
    allowance (``queued``: all of theirs without a rate slot yet) and it goes out within
    `MAX_WAIT` (after ``next_slot`` seconds of slots booked already)."""
    if per_second <= 0:
        return False
    return queued < allowance(per_second, connections) and next_slot + queued / per_second <= MAX_WAIT


def shared_hold(next_slot: float, queued: int, per_second: float,
                held: int | Callable[[float], int] = 0) -> int:
    """The hold for a message that does not fit under its share: the longest delay within
    the time the backlog ahead of it needs at the share's rate (the slots booked, the
    ``queued`` messages, and those held earlier that come back before it, as in
    `hold_delay`), so that it is back while there is still work queued."""
    if per_second <= 0:
        return HOLD_DELAYS[-1]
    ahead = held if callable(held) else (lambda _delay: held)
    return _drained(lambda delay: next_slot + (queued + ahead(delay)) / per_second)


def _drained(backlog: Callable[[float], float]) -> int:
    """The longest delay that ends at least `RETURN_MARGIN` before the ``backlog(delay)``
    seconds ahead of a message held that long have passed (the shortest delay if none)."""
    best = HOLD_DELAYS[0]
    for delay in HOLD_DELAYS:
        if delay <= backlog(delay) - RETURN_MARGIN:
            best = delay
        else:
            break
    return best


def allowance(per_second: float, connections: int) -> int:
    """How many messages the ready queue may hold (at least one)."""
    floor = min(PER_CONNECTION * max(1, connections), int(per_second * MAX_WAIT))
    return max(1, floor, int(per_second * HORIZON))


def _at_least(seconds: float) -> int:
    """The shortest delay of at least ``seconds`` (the longest there is, beyond it)."""
    for delay in HOLD_DELAYS:
        if delay >= seconds:
            return delay
    return HOLD_DELAYS[-1]


def _at_most(seconds: float) -> int:
    """The longest delay of at most ``seconds`` (the shortest there is, below it)."""
    best = HOLD_DELAYS[0]
    for delay in HOLD_DELAYS:
        if delay <= seconds:
            best = delay
    return best


def hold_delay(queued: int, per_second: float, connections: int,
               held: int | Callable[[float], int] = 0) -> int | None:
    """None when one more message fits; else the delay (s) after which it should come back.
    ``held``: messages held earlier that come back before it, as a number or as a function
    of the delay (``HeldLedger.due_within``): only those that return before this message
    are ahead of it (a message coming back early must not be put behind later ones)."""
    if queued < allowance(per_second, connections):
        return None
    if per_second <= 0:
        return HOLD_DELAYS[-1]
    ahead = held if callable(held) else (lambda _delay: held)
    return _drained(lambda delay: (queued + ahead(delay)) / per_second)


def within_age(delay: int, remaining: float) -> int:
    """``delay``, or sooner when the message's maximum age ends first (``remaining``
    seconds): it then comes back about when it expires, not a pause or backlog later."""
    return min(delay, _at_least(max(0.0, remaining)))


def paused_delay(remaining: float | None, paused_for: float, per_second: float, held: int = 0) -> int:
    """The hold for mail of a paused destination. ``remaining``: seconds until the pause
    ends, None when it ends only by a resume; ``paused_for``: seconds it has lasted."""
    if remaining is None:
        return _at_least(max(PAUSED_MIN, min(paused_for / 4, 300.0)))
    drain = held / per_second if per_second > 0 else 0.0
    return max(_at_least(remaining), _at_most(remaining + drain))


class HeldLedger:
    """How many of a destination's messages are out in delay queues right now (an
    estimate: counted when held, forgotten from the second their delay ends, so mail
    that is coming back right now is not counted as still ahead of itself)."""

    __slots__ = ("_due", "_seconds", "_total")

    def __init__(self) -> None:
        self._due: dict[int, int] = {}  # second of the return time -> messages
        self._seconds: list[int] = []  # heap of the keys of _due
        self._total = 0

    def note(self, now: float, delay: float) -> None:
        second = int(now + delay)
        count = self._due.get(second)
        if count is None:
            heapq.heappush(self._seconds, second)
            count = 0
        self._due[second] = count + 1
        self._total += 1

    def due_within(self, now: float) -> Callable[[float], int]:
        """A function of a delay: how many held messages come back before ``now + delay``."""
        self.ahead(now)  # forget what is back already
        items = list(self._due.items())

        def within(delay: float) -> int:
            limit = now + delay
            return sum(n for second, n in items if second < limit)

        return within

    def ahead(self, now: float) -> int:
        seconds = self._seconds
        while seconds and seconds[0] <= now:
            self._total -= self._due.pop(heapq.heappop(seconds))
        return self._total

    def counted(self, now: float) -> int:
        """`ahead` without forgetting anything: a snapshot may be taken on another thread
        (a metrics scrape) while the destination holds mail, so it only reads."""
        seconds = self._seconds
        if not seconds or seconds[0] > now:
            return self._total
        return self._total - sum(n for second, n in list(self._due.items()) if second <= now)
