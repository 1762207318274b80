"""How much mail a destination may keep in memory, and how long to hold the rest.

Theory of operation: a destination keeps in its ready queue only what it can send soon:
`HORIZON` seconds of its current message rate, and never less than a handful per allowed
connection (so a slow rate still keeps its connections busy). Everything beyond that is held
in a broker delay queue and acknowledged, so that the prefetch window never fills with one
slow destination's mail and no delivery stays unacknowledged anywhere near RabbitMQ's
`consumer_timeout`. The hold is chosen from a few fixed delays (one delay queue each) long
enough for the backlog ahead of the message to drain at the current rate.
"""

from __future__ import annotations

HORIZON = 10.0  # seconds of sending a destination keeps in memory
PER_CONNECTION = 4  # at least this many per allowed connection
HOLD_DELAYS = (5, 15, 30, 60, 120, 300)  # seconds; one delay queue per value and lane


def allowance(per_second: float, connections: int) -> int:
    """How many messages the ready queue may hold."""
    return max(PER_CONNECTION * max(1, connections), int(per_second * HORIZON))


def hold_delay(queued: int, per_second: float, connections: int) -> int | None:
    """None when one more message fits; else the delay (s) after which it should come back."""
    limit = allowance(per_second, connections)
    if queued < limit:
        return None
    drain = queued / per_second if per_second > 0 else HOLD_DELAYS[-1]
    for delay in HOLD_DELAYS:
        if delay >= drain:
            return delay
    return HOLD_DELAYS[-1]
