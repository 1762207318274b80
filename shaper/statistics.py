"""A destination's state at one moment, and why its mail waits.

Theory of operation: `statistics(core, now)` reads a shaper.destination.DestinationCore and
says what an operator asks first: what is in memory (the ready lanes, the jobs workers hold
without a rate slot), what is out in delay queues (``held``), the limits in force (the
rules' with a throttle on top while in backoff), and the one reason its mail waits, the
first of these that applies:

* ``unreachable``: no host accepted a connection; the destination rests until its probe.
* ``paused``: by an operator or a suspend pattern (``reason`` says which).
* ``connections``: mail is ready and every connection the window allows is in use (for
  bulk: all it may use beside the single lane's reserve).
* ``rate``: mail is ready and a connection has room: it waits for its turn in the message
  rate in force (``per_second``: the rules', a throttle's, or what receivers accept).
* ``held``: nothing is ready, mail is out in delay queues until its delay ends.
* ``""``: nothing waits.

It reads, never decides nor changes anything (``now`` only leaves out held mail that is
back already): the metrics take it on their scrape thread while the destination works.

What only the shell knows (sessions open, workers idle on one, the last error) it passes
in (mta.destinations.delivery), so `mta status` and the metrics read one snapshot per
destination and nothing else of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shaper.state import Mode

__all__ = ["Statistics", "statistics"]


@dataclass(slots=True)
class Statistics:
    """A copy: changing it changes nothing. (Not frozen: the metrics take one per held
    message, and a frozen dataclass costs several times as much to make.)"""

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
    message_rate: Any = None  # max_message_rate in force (a shaper.units.Rate)
    connection_rate: Any = None  # max_connection_rate in force
    deliveries_per_connection: int = 0  # max_deliveries_per_connection in force
    throttled: bool = False  # a throttle's limits are in force (backoff)
    connections: int = 0  # sessions open (the shell's)
    idle: int = 0  # workers waiting for mail on an open session (the shell's)
    last_error: str | None = None  # the last failure to connect or deliver (the shell's)

    @property
    def queued(self) -> int:
        """Ready in memory, both lanes."""
        return self.single + self.bulk

    @property
    def in_flight(self) -> int:
        """Workers busy with a message or a connect (the rest wait idle for mail)."""
        return max(0, self.workers - self.idle)

    @property
    def active(self) -> bool:
        """Worth a line in `mta status`: not normal, or anything in memory, on the wire or open."""
        return self.mode != "normal" or bool(self.queued or self.workers or self.connections)


def statistics(core: Any, now: float, *, connections: int = 0, idle: int = 0,
               last_error: str | None = None) -> Statistics:
    lanes, state, window, policy = core.lanes, core.state, core.window, core.policy
    held = core.held.counted(now)
    # In the fields' order, not by keyword: the metrics take one per held message, and
    # twenty keywords cost four times the rest of this function.
    return Statistics(
        str(state.mode), state.reason, state.since, state.until,  # mode, reason, since, until
        len(lanes.single), len(lanes.bulk), lanes.unpaced, held,  # single, bulk, unpaced, held
        core.per_second, policy.connection_limit,  # per_second, connection_limit
        window.allowed, window.in_use,  # connections_allowed, workers
        core.unreachable_since, _waits(core, held),  # unreachable_since, waits
        policy.max_message_rate, policy.max_connection_rate,  # message_rate, connection_rate
        policy.max_deliveries_per_connection,  # deliveries_per_connection
        state.mode is Mode.BACKOFF and core.throttle is not None,  # throttled
        connections, idle, last_error,
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
