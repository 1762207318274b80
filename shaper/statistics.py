"""A destination's state at one moment, and why its mail waits.

Theory of operation: `statistics(core, now)` reads a shaper.destination.DestinationCore and
says what an operator asks first: what is in memory (the ready lanes, the jobs workers hold
without a rate slot), what is out in delay queues (``held``), the limits in force, and the
one reason its mail waits, the first of these that applies:

* ``unreachable``: no host accepted a connection; the destination rests until its probe.
* ``paused``: by an operator or a suspend pattern (``reason`` says which).
* ``connections``: mail is ready and every connection the window allows is in use (for
  bulk: all it may use beside the single lane's reserve).
* ``rate``: mail is ready and a connection has room: it waits for its turn in the message
  rate in force (``per_second``: the rules', a throttle's, or what receivers accept).
* ``held``: nothing is ready, mail is out in delay queues until its delay ends.
* ``""``: nothing waits.

It reads, never decides: ``now`` only forgets held mail that is back already.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shaper.state import Mode

__all__ = ["Statistics", "statistics"]


@dataclass(frozen=True, slots=True)
class Statistics:
    mode: str
    reason: str
    since: float
    until: float | None
    single: int  # ready in the single lane
    bulk: int  # ready in the bulk lane
    unpaced: int  # taken by workers, without a rate slot yet
    held: int  # out in delay queues now
    per_second: float  # the message rate in force
    connection_limit: int
    connections_allowed: int  # by the window now
    workers: int
    unreachable_since: float | None
    waits: str  # why its mail waits (see the module's docstring)


def statistics(core: Any, now: float) -> Statistics:
    lanes, state, window = core.lanes, core.state, core.window
    held = core.held.ahead(now)
    return Statistics(
        mode=str(state.mode), reason=state.reason, since=state.since, until=state.until,
        single=len(lanes.single), bulk=len(lanes.bulk), unpaced=lanes.unpaced, held=held,
        per_second=core.per_second, connection_limit=core.policy.connection_limit,
        connections_allowed=window.allowed, workers=window.in_use,
        unreachable_since=core.unreachable_since, waits=_waits(core, held),
    )


def _waits(core: Any, held: int) -> str:
    lanes, window = core.lanes, core.window
    if core.state.mode is Mode.PAUSED:
        return "unreachable" if core.unreachable_since is not None else "paused"
    if lanes.queued:
        cap = lanes.bulk_cap(window.allowed, core.policy.single_connections)
        if window.available <= 0 or (not lanes.single and window.in_use >= cap):
            return "connections"
        return "rate"
    return "held" if held else ""
