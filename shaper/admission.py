"""Whether a destination keeps a message routed to it: held, handed, or queued.

Theory of operation: a destination keeps in memory only what it sends soon, so no delivery
waits unacknowledged anywhere near the broker's consumer timeout (shaper.allowance). A
message is held, for a known delay into a delay queue, while the destination is paused;
at a slow destination, when it would wait longer than `MAX_WAIT` for its rate slot (also
when an idle worker would take it at once: the worker would wait holding it); when its
provider's one rate, shared by all the provider's destinations, is booked too far ahead;
and past its lane's allowance (a bulk campaign's own allowance, within twice the lane's,
so a big campaign does not push a small one out). Otherwise an idle worker takes it
(`HAND`, bulk only within its cap of the window) or it joins its lane (`QUEUE`).

`Admission` is that part of shaper.destination.DestinationCore: it reads the core's lanes,
state, rates, window, ledgers and provider share, and takes ``now``. `HAND` and `QUEUE`
are single instances: admitting a message allocates nothing unless it is held.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shaper.allowance import MAX_WAIT, PER_CONNECTION, allowance, hold_delay, paused_delay, shared_fits, shared_hold, slow_hold
from shaper.state import Mode

__all__ = ["HAND", "QUEUE", "Admission", "Hand", "Hold", "Queue"]


class Hand:
    """Admitted: an idle worker takes it now (if none is idle any more: `queue` it)."""
    __slots__ = ()


class Queue:
    """Admitted: it joined its lane's ready queue."""
    __slots__ = ()


HAND, QUEUE = Hand(), Queue()  # one of each: admitting a message allocates nothing


@dataclass(frozen=True, slots=True)
class Hold:
    """Not kept: into a delay queue for ``delay`` seconds (``reason``: why)."""
    delay: int
    reason: str


class Admission:
    """Admission of a destination's mail (the core's attributes it reads are set by
    shaper.destination.DestinationCore)."""

    def admit(self, job: Any, now: float) -> Hand | Queue | Hold:
        """A message routed here (after `refresh`): held, handed to an idle worker, or
        queued. A `Hold` is noted in the ledgers; the shell holds the job."""
        self.last_push = now
        lanes = self.lanes
        bulk = job.lane != "single"
        if lanes.single_about(now, not bulk):
            self._rate(now)
        if self.state.mode is Mode.PAUSED:
            state = self.state
            remaining = state.until - now if state.until is not None else None
            return self._noted(now, paused_delay(remaining, now - state.since, self.per_second, self.held.ahead(now)),
                               "paused")
        per_second = self.per_second
        # Slow: mind each message's wait, also when an idle worker would take it at once (it
        # would wait for its slot holding the delivery unacknowledged).
        if per_second * MAX_WAIT < 2 * PER_CONNECTION:
            next_slot = self.message_rate.check(now).retry_after
            if not bulk:  # single mail may also take its own share
                next_slot = min(next_slot, self.single_rate.check(now).retry_after)
            delay = slow_hold(next_slot, len(lanes.bulk if bulk else lanes.single) + lanes.unpaced, per_second)
            if delay is not None:
                return self._noted(now, delay, "rate")
        if self.share is not None:  # its provider's rate, over all the provider's destinations
            delay = self._shared_hold(now, bulk)
            if delay is not None:
                return self.held_for_share(now, delay)
        if not bulk or lanes.bulk_busy < lanes.bulk_cap(self.window.allowed, self.policy.single_connections):
            return HAND
        return self.queue(job, now)

    def handed(self, job: Any) -> None:
        """An idle worker took ``job`` (`HAND`): it holds it, unpaced."""
        lanes = self.lanes
        lanes.bulk_busy += job.lane != "single"
        lanes.unpaced += 1
        if self.share is not None:  # self.waiting(1), inline: once per message
            self.share.queued += 1

    def queue(self, job: Any, now: float) -> Queue | Hold:
        """Into its lane's ready queue, if within the allowance; else held."""
        lanes = self.lanes
        bulk = job.lane != "single"
        ready = lanes.bulk if bulk else lanes.single
        limit = allowance(self.per_second, self.window.allowed)
        # Each bulk campaign gets its own allowance (within twice the destination's), so a
        # big campaign in memory does not push a small one out to the delay queues.
        queued = ready.count(self._campaign(job)) if bulk and len(ready) < 2 * limit else len(ready)
        if queued >= limit:
            return self._noted(now, hold_delay(queued, self.per_second, self.window.allowed,
                                               self.held.due_within(now)), "allowance")
        ready.append(job)
        self.waiting(1)
        return QUEUE

    def _noted(self, now: float, delay: int, reason: str) -> Hold:
        self.held.note(now, delay)
        return Hold(delay, reason)

    def held_for_share(self, now: float, delay: int) -> Hold:
        self.share.held.note(now, delay)
        return self._noted(now, delay, "provider")

    def _shared_hold(self, now: float, bulk: bool) -> int | None:
        """None when the provider's rate sends one more message of this destination soon,
        else how long to hold it: all the provider's destinations drain through that one
        rate, so the backlog that counts is theirs together (single mail only has its own
        ahead of it: it takes the next slot). The exact next slot is asked for only when a
        bound on it (one booked per session, each worker paces one job at a time) does not
        already settle it."""
        share = self.share
        rate = share.per_second
        queued = share.queued if bulk else len(self.lanes.single)
        booked = (max(share.in_use, share.limit) + 1) / rate if rate > 0 else MAX_WAIT
        if shared_fits(booked, queued, rate, share.limit):
            return None
        next_slot = share.rate.check(now).retry_after
        if shared_fits(next_slot, queued, rate, share.limit):
            return None
        return shared_hold(next_slot, queued, rate, share.held.due_within(now))

