"""What one destination decides: which mail it keeps, which it holds, what its workers
send next and how fast, and what a reply teaches it.

Theory of operation: a destination (an MX site, a provider, a configured domain) keeps in
memory only what it can send soon, in two lanes (shaper.lanes); the rest is held in delay
queues for a known delay (shaper.allowance), so no delivery stays unacknowledged for long.
`DestinationCore` holds its decisions and the state they rest on; the shell (mta.destinations)
only carries them out with sockets, timers and sleeps, and tells it the time as ``now``.

* Admission (`admit`, shaper.admission): held (a `Hold` says for how long and why),
  handed to an idle worker (`HAND`), or queued in its lane (`QUEUE`).
* Limits: the rules, reduced by a throttle while in backoff (shaper.state), the message
  rate further by what receivers accepted (shaper.adaptive); the connection window grows
  with successes (shaper.window). While single mail is about, bulk leaves
  ``single_rate_share`` of the rate to the single lane (which may still take bulk's share
  when bulk has room). A rate that drops trims the ready queues to what it sends soon.
* The next job for a worker, one value (`next_job`): the job to send now (single first,
  bulk within its cap, its rate slot due), a `Wait` for the slot booked for it, or `IDLE`.
  A job whose provider's rate has no slot within `MAX_WAIT` is held instead (it does not
  wait that long unacknowledged). `follow` gives a job to pipeline behind another, only
  with its slot due now.
* Feedback: a success grows the window and may end a backoff; a refusal is matched against
  the operator's patterns (suspend, throttle, bounce) and the receiver's "too many
  connections" and "too fast" signals (shaper.replies).
* `statistics`: a snapshot that says why mail waits (shaper.statistics).
* Dead destinations: when no host accepts a connection and none is open, the destination
  rests for `probe` seconds (`PROBE_FIRST` doubling to `PROBE_MAX`), its mail held, then
  one connection probes it; a connection resets the probe (Postfix's dead destination).

Holds and state changes are handed out as typed values to two callables given at
construction (``hold(Held)``, ``moved(Transition)``; shaper.handoffs, shaper.state); jobs
and replies are the shell's objects, of which only ``lane``, and a reply's ``ok``,
``code``, ``text`` and ``phase``, are read. Every time here is monotonic seconds (the
shell converts what people read to wall time at its edge).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from shaper.adaptive import AcceptMeter, AdaptiveRate
from shaper.admission import HAND, QUEUE, Admission, Hand, Hold, Queue
from shaper.allowance import MAX_WAIT, HeldLedger, allowance, hold_delay, paused_delay, shared_hold
from shaper.handoffs import IDLE, Held, Idle, Wait
from shaper.lanes import Lanes
from shaper.limiter import Gcra, message_burst
from shaper.patterns import PatternRule, Patterns
from shaper.replies import parse_enhanced, slow_down
from shaper.state import DestinationState, Mode, Transition
from shaper.statistics import Statistics, statistics
from shaper.units import Rate
from shaper.window import ConnectionWindow

__all__ = ["FORGET_AFTER", "HAND", "IDLE", "PROBE_FIRST", "PROBE_MAX", "QUEUE", "START_CONNECTIONS",
           "DestinationCore", "Hand", "Held", "Hold", "Idle", "Queue", "Wait"]

START_CONNECTIONS = 3  # a new destination earns the rest of its connection_limit
FORGET_AFTER = 900.0  # seconds idle after which a destination with nothing to remember is dropped
PROBE_FIRST, PROBE_MAX = 30.0, 300.0  # seconds a dead destination rests before a probe


class DestinationCore(Admission):
    """The decisions of one destination. ``policy`` is the rules' limits (duck-typed:
    the fields of mta.config.Policy), ``merge(policy, throttle)`` puts a throttle's on
    top, ``campaign(job)`` names a bulk job's campaign, ``share`` is its provider's
    (mta.destinations.share: a rate, a ledger and counts over all its destinations)."""

    def __init__(self, policy: Any, now: float, *, hold: Callable[[Held], None],
                 moved: Callable[[Transition], None], merge: Callable[[Any, Any], Any],
                 campaign: Callable[[Any], Hashable], patterns: Patterns | None = None, share: Any = None):
        self._hold = hold
        self._moved_to = moved
        self._merge = merge
        self._campaign = campaign
        self.patterns = patterns or Patterns()
        self.share = share
        self.lanes = Lanes(campaign)
        self.held = HeldLedger()
        self.accepted = AcceptMeter()
        self.last_push = now
        self.state = DestinationState(now)
        self.throttle: Any = None  # reduced limits while in backoff
        self.base = self.policy = policy
        self.window = ConnectionWindow(policy.connection_limit, start=min(START_CONNECTIONS, policy.connection_limit))
        self.adaptive = AdaptiveRate(policy.max_message_rate.per_second)
        rate = policy.max_message_rate
        self.message_rate = Gcra(rate, burst=message_burst(rate.per_second))  # bulk's share
        self.single_rate = Gcra(rate, burst=1)  # the single lane's reserved share
        self.connection_rate = Gcra(policy.max_connection_rate, burst=policy.connection_limit)
        self.per_second = rate.per_second
        self.unreachable_since: float | None = None
        self.probe = PROBE_FIRST
        self.apply(policy, now)

    # ---- limits

    def apply(self, policy: Any, now: float) -> None:
        """New rules (start or reload); running sessions finish under them."""
        self.base = policy
        self._limits(now)

    def _limits(self, now: float) -> None:
        policy = self.base
        if self.state.mode is Mode.BACKOFF and self.throttle is not None:
            policy = self._merge(policy, self.throttle)
        self.policy = policy
        self.window.set_limit(policy.connection_limit)
        self.adaptive.set_ceiling(policy.max_message_rate.per_second)
        self._rate(now)
        self.connection_rate.set_rate(policy.max_connection_rate, now, burst=policy.connection_limit)

    def _rate(self, now: float) -> None:
        per_second = self.policy.max_message_rate.per_second
        if self.adaptive.adapting:
            per_second = self.adaptive.current
        self.per_second = per_second
        share = self.policy.single_rate_share if self.lanes.single_seen is not None else 0.0
        bulk = per_second * (1 - share)
        self.message_rate.set_rate(Rate(bulk, 1.0), now, burst=message_burst(bulk))
        single = per_second * share if share > 0 else per_second
        self.single_rate.set_rate(Rate(single, 1.0), now, burst=message_burst(single))
        self._trim(now)

    def _trim(self, now: float) -> None:
        """After the rate dropped: hold what the ready queues can no longer send soon, so
        nothing stays unacknowledged for long at the lower rate."""
        limit = allowance(self.per_second, self.window.allowed)
        for ready in (self.lanes.bulk, self.lanes.single):
            while len(ready) > limit:
                job = ready.pop()
                self.waiting(-1)
                delay = hold_delay(len(ready) + 1, self.per_second, self.window.allowed, self.held.due_within(now))
                self.held.note(now, delay)
                self._hold(Held(job, delay, "allowance"))

    # ---- state

    def refresh(self, now: float) -> None:
        """Let time act: end a pause or backoff whose time has come, step the rate up."""
        state = self.state
        if state.until is not None and now >= state.until:
            self._moved(state.tick(now), now)
        if self.adaptive.tick(now):
            self._rate(now)

    def _moved(self, transition: Transition | None, now: float) -> None:
        if transition is None:
            return
        self._moved_to(transition)
        if transition.source is Mode.BACKOFF or transition.target is Mode.BACKOFF:
            if self.state.mode is Mode.NORMAL:
                self.throttle = None
            self._limits(now)
        if self.state.mode is Mode.PAUSED:
            self.hold_all(now)

    def suspend(self, now: float, until: float | None, reason: str) -> None:
        """Send nothing until ``until`` (None: until resumed); queued mail is held."""
        self._moved(self.state.pause(now, until, reason), now)

    def back_off(self, now: float, until: float, limits: Any, reason: str) -> None:
        """Reduced limits until ``until``."""
        self.throttle = limits
        transition = self.state.backoff(now, until, reason)
        if transition is None and self.state.mode is Mode.BACKOFF:
            self._limits(now)  # same end, maybe other limits
        self._moved(transition, now)

    def resume(self, now: float, reason: str) -> None:
        """Raises shaper.state.IllegalTransition when there is nothing to resume."""
        self._moved(self.state.resume(now, reason), now)

    def hold_all(self, now: float) -> None:
        for job in self.drain():
            self.hold_paused(job, now)

    def hold_paused(self, job: Any, now: float) -> None:
        state = self.state
        remaining = state.until - now if state.until is not None else None
        delay = paused_delay(remaining, now - state.since, self.per_second, self.held.ahead(now))
        self.held.note(now, delay)
        self._hold(Held(job, delay, "paused"))

    def statistics(self, now: float) -> Statistics:
        """A snapshot, and why mail waits (shaper.statistics)."""
        return statistics(self, now)

    def forgettable(self, now: float, busy: bool) -> bool:
        """Nothing here that a new destination would not start with: no mail, no worker
        (``busy``), no pause or throttle, no held mail due back, and no mail for
        `FORGET_AFTER` (by then an adapted rate has climbed back and a learned connection
        limit is asked again)."""
        if now - self.last_push < FORGET_AFTER or busy or self.lanes.queued:
            return False
        self.refresh(now)  # a pause or throttle whose time is over ends now
        return self.state.mode is Mode.NORMAL and not self.held.ahead(now)

    def waiting(self, change: int) -> None:
        """Messages of this destination in memory without a rate slot (queued, or taken and
        not paced) changed: its provider's share counts them over all its destinations."""
        share = self.share
        if share is not None:
            share.queued += change

    def put_back(self, job: Any) -> None:
        """A job taken from the ready queue goes back to its front, unpaced."""
        self.lanes.put_back(job)
        self.waiting(1)

    def drain(self) -> list:
        """Everything not yet on the wire (shutdown, lost broker, pause)."""
        jobs = self.lanes.drain()
        self.waiting(-len(jobs))
        return jobs

    # ---- the next job for a worker

    def next_job(self, now: float, handed: Any = None) -> Any:
        """What a worker does next: the job to send now (single first, bulk within its cap,
        its rate slot due), a `Wait` for the slot booked for a job it takes, or `IDLE`
        (nothing for it). ``handed``: the job `HAND` gave the worker, to book first. A job
        whose provider's rate has no slot within `MAX_WAIT` is held (`Held`, "provider": it
        does not wait that long unacknowledged) and the next one taken."""
        lanes = self.lanes
        while True:
            job = handed if handed is not None else lanes.take(self.window.allowed, self.policy.single_connections)
            handed = None
            if job is None:
                return IDLE
            lanes.unpaced -= 1  # booked now: no longer waiting for its slot
            if self.share is not None:  # self.waiting(-1), inline: once per message
                self.share.queued -= 1
            wait = self._slot(job, now)
            if wait is None:
                continue
            return job if wait <= 0 else Wait(now + wait, job)

    def _slot(self, job: Any, now: float) -> float | None:
        """Book ``job``'s rate slot: the seconds to wait for it; None: held, its provider's
        rate booked beyond `MAX_WAIT` (by the provider's other destinations, or slower)."""
        if self.adaptive.adapting:
            self.refresh(now)  # the adapted rate climbs back in steps
        shared = 0.0
        share = self.share
        if share is not None:  # the provider's rate over all its destinations, first
            shared = share.rate.reserve(now)
            if shared > MAX_WAIT:
                share.rate.unreserve()
                self.lanes.release(job)
                hold = self.held_for_share(now, shared_hold(shared, share.queued, share.per_second,
                                                            share.held.due_within(now)))
                self._hold(Held(job, hold.delay, hold.reason))
                return None
        if job.lane == "single":
            # Bulk's share when it has room (bulk is idle), else the single lane's own.
            if self.message_rate.check(now).allowed:
                self.message_rate.take(now)
                return shared
            return max(self.single_rate.reserve(now), shared)
        return max(self.message_rate.reserve(now), shared)

    def single_first(self, job: Any) -> Any:
        """After a bulk job's wait for its slot: single mail that arrived meanwhile takes
        the slot, the bulk job goes back to the front of its lane."""
        lanes = self.lanes
        if job.lane != "single" and lanes.single:
            lanes.bulk.appendleft(job)
            lanes.release(job)
            return lanes.single.popleft()
        return job

    def follow(self, current: Any, sent: int, now: float) -> Any | None:
        """The job to pipeline behind ``current`` on a session that carried ``sent``: one
        that is ready with its rate slot due now (never one in the future), while the
        destination keeps going (not paused or shrinking) and the session has room."""
        if self.window.excess or self.state.mode is Mode.PAUSED or sent + 2 > self.policy.max_deliveries_per_connection:
            return None
        lanes = self.lanes
        if lanes.single:
            job = lanes.single.popleft()
        elif (lanes.bulk and lanes.bulk_busy - (current.lane != "single")
              < lanes.bulk_cap(self.window.allowed, self.policy.single_connections)):
            lanes.bulk_busy += 1  # this worker holds two bulk jobs until current is settled
            job = lanes.bulk.popleft()
        else:
            return None
        if self.adaptive.adapting:
            self.refresh(now)
        if ((self.message_rate.take(now).allowed or (job.lane == "single" and self.single_rate.take(now).allowed))
                and (self.share is None or self.share.rate.take(now).allowed)):
            self.waiting(-1)
            return job
        (lanes.single if job.lane == "single" else lanes.bulk).appendleft(job)  # its turn is later
        lanes.release(job)
        return None

    # ---- connections

    def wants_connection(self, opening: int) -> bool:
        """Whether another worker would carry mail: jobs wait that the ``opening`` ones will
        not take, and the window has room (for bulk: outside the single lane's reserve).
        With sessions up, ask `connection_soon` too."""
        lanes = self.lanes
        if lanes.queued <= opening or self.state.mode is Mode.PAUSED:
            return False
        if not lanes.single and self.window.in_use >= lanes.bulk_cap(self.window.allowed, self.policy.single_connections):
            return False
        return self.window.available > 0

    def connection_soon(self, now: float) -> bool:
        """`max_connection_rate` allows another connection within `MAX_WAIT` (else the open
        sessions carry the mail until it does)."""
        return self.connection_rate.check(now).retry_after <= MAX_WAIT

    def connection_wait(self, now: float) -> float | None:
        """Take a connection from `max_connection_rate`: None when it allows one now, else
        the seconds until it does (nothing taken)."""
        decision = self.connection_rate.take(now)
        return None if decision.allowed else decision.retry_after

    def hold_for_connection(self, jobs: list, wait: float, now: float) -> None:
        """No session is up and the next connection is ``wait`` seconds away: ``jobs`` are
        held until then."""
        for job in jobs:
            delay = paused_delay(wait, 0.0, self.per_second, self.held.ahead(now))
            self.held.note(now, delay)
            self._hold(Held(job, delay, "connection rate"))

    def reachable(self) -> None:
        """A host accepted a connection: the destination is alive, the next probe is short."""
        self.unreachable_since = None
        self.probe = PROBE_FIRST

    def dead(self, now: float, reason: str) -> float:
        """No host accepted a connection and none is open: rest for the probe interval (it
        doubles up to `PROBE_MAX`), the mail held; one connection probes after it."""
        if self.unreachable_since is None:
            self.unreachable_since = now
        self.window.collapse()
        probe = self.probe
        self.probe = min(PROBE_MAX, probe * 2)
        self.suspend(now, now + probe, reason)
        return probe

    # ---- feedback

    def succeeded(self, now: float) -> None:
        """The receiver accepted a message."""
        self.accepted.note(now)
        self.window.on_success(now)
        self.state.on_success(now)

    def refused(self, reply: Any, now: float) -> tuple[bool | None, bool]:
        """What a refusal teaches: a pattern's verdict (True bounce, False retry, None:
        no pattern said) and whether the message rate was lowered."""
        rule = self.patterns.find(reply.code, parse_enhanced(reply.text), reply.text) if self.patterns else None
        verdict = None
        if rule is not None:
            if rule.action in ("suspend", "throttle"):  # the operator's reaction replaces ours
                self._apply_rule(rule, reply, now)
                return None, False
            verdict = rule.action == "bounce"
        signal = slow_down(reply.code, reply.text)
        if signal == "connections":
            self.window.on_too_many(now)
        elif signal == "rate":
            if self.adaptive.on_rate_limited(now, self.accepted.rate(now)):
                self._rate(now)
                return verdict, True
        elif reply.code is None and reply.phase != "message":
            self.window.on_pushback()  # dropped or timed out mid-session
        return verdict, False

    def adopt_rate(self, per_second: float, now: float) -> None:
        """The rate another node learned from this receiver, if lower (shaper.adaptive)."""
        if self.adaptive.adopt(now, per_second):
            self._rate(now)

    def _apply_rule(self, rule: PatternRule, reply: Any, now: float) -> None:
        reason = f"{rule.describe()}: {reply}"
        if rule.action == "suspend":
            self.suspend(now, now + rule.duration, reason)
        else:
            self.back_off(now, now + rule.duration, rule.payload, reason)
