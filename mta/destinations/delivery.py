"""Destinations and their connection workers.

A destination (an MX site, a provider, or a configured domain) owns a ready queue per lane
holding only what it can send soon (shaper.allowance; the rest is held in a delay queue)
and up to its connection window of workers. A worker is a task that holds one SMTP session
and loops: take the next job (single lane first), wait for the message rate, send, hand the
outcome to the engine; until the queue stays empty for `idle_timeout`, the session has
carried `max_deliveries_per_connection` messages, or the window shrank under it. No task
per message: a job is handed from the queue straight to a waiting worker.

What the destination may do is decided in `shaper` and only carried out here:

* `state` (normal, backoff, paused; shaper.state): a `throttle` pattern puts the
  destination on reduced limits for a while, a `suspend` pattern or an operator pauses it;
  a paused destination holds all its mail in delay queues (no attempt is counted).
* `window` (shaper.window): connections start at a few and grow with successes up to
  `connection_limit`; "421 too many connections" sets them just below what the receiver
  refused; failures to connect halve them.
* `adaptive` (shaper.adaptive): "rate limited" replies lower the message rate to what
  the receiver accepts; it climbs back in steps while the receiver stays quiet.
* Lanes: single mail goes first in every destination, and takes the next rate slot a
  bulk worker was waiting for. Bulk uses the whole window and rate while no single mail
  is about; from the first single message until `SINGLE_RECENT` seconds after the last,
  bulk leaves `single_connections` of the window and `single_rate_share` of the rate to
  the single lane (which may still borrow bulk's share when bulk has room), so a backlog
  of bulk never puts a password reset behind it. Inside the bulk lane, campaigns (a
  message's first tag) take turns (shaper.fair).
* When no host of the destination accepts a connection and no other session is up, the
  destination is dead: the message that was tried is deferred, the rest is held, and the
  destination is paused for `probe` seconds (30 s doubling to 5 min); then one connection
  probes it, and success opens it up again (Postfix's dead destination, without failing
  every queued message).
* Connections of all destinations together stay within the process's budget
  (mta.destinations.budget): a worker starts only with a slot, a destination without one waits in
  line, and an idle session may be closed to give its slot to a waiting destination.
  The destinations of one provider also share its connections and message rate
  (mta.destinations.share), the same way.
* One attempt is bounded: at most `smtp.max_mx_hosts` hosts and `smtp.max_addresses_per_mx`
  addresses each, all within `smtp.delivery_deadline` (opening a session, all its steps
  together, ends by the time left; the transaction is watched by a `Watchdog`), and a connection
  that `max_connection_rate` allows only in more than `MAX_WAIT` seconds is not waited
  for with the delivery unacknowledged.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from mta.clock import Clock
from mta.destinations.budget import Budget
from mta.config import Policy, Smtp, merge
from mta.intake.message import Job
from mta.routing.mx import MxAnswer
from mta.settle.settler import abandoned
from mta.smtp.client import Connector, Reply, Session, SessionFailed, Timeouts
from shaper.adaptive import AdaptiveRate
from shaper.allowance import (MAX_WAIT, PER_CONNECTION, HeldLedger, allowance, hold_delay, paused_delay, shared_fits,
                              shared_hold, slow_hold)
from shaper.budget import UNLIMITED_FDS_BUDGET
from shaper.fair import FairQueue
from shaper.limiter import Gcra
from shaper.patterns import PatternRule, Patterns
from shaper.replies import parse_enhanced, slow_down
from shaper.state import DestinationState, IllegalTransition, Mode, Transition
from shaper.units import Duration, Rate
from shaper.window import ConnectionWindow

log = logging.getLogger("mta.delivery")

# Outcome callback: (job, reply, MX host name, IP address, permanent); the host is None
# before any was tried; permanent is a pattern's verdict (True bounce, False retry) or None.
Done = Callable[[Job, Reply, "str | None", "str | None", "bool | None"], None]

START_CONNECTIONS = 3  # a new destination earns the rest of its connection_limit
SINGLE_RECENT = 30.0  # seconds the single lane's reserve outlives its last message
FORGET_AFTER = 900.0  # seconds idle after which a destination with nothing to remember is dropped
PROBE_FIRST, PROBE_MAX = 30.0, 300.0  # seconds a dead destination rests before a probe


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


def timeouts_of(policy: Policy) -> Timeouts:
    return Timeouts(
        connect=policy.connect_timeout, ehlo=policy.ehlo_timeout, starttls=policy.starttls_timeout,
        mail_from=policy.mail_from_timeout, rcpt_to=policy.rcpt_to_timeout,
        data=policy.data_timeout, data_dot=policy.data_dot_timeout,
    )


def _commands(session: Session, job: Job) -> tuple[bytes, bytes] | Reply:
    """The job's MAIL FROM and RCPT TO for this session, or the reply refusing it here."""
    return session.commands(job.sender.text if job.sender else "", job.recipient.text, job.data,
                            utf8=job.recipient.utf8 or bool(job.sender and job.sender.utf8),
                            eight_bit=job.eight_bit)


def campaign(job: Job) -> str:
    """Which bulk campaign a message belongs to: its first tag."""
    return job.tags[0] if job.tags else ""


def message_burst(per_second: float) -> int:
    """50 ms worth back to back: enough to absorb timer jitter, too little to show as a
    burst at the receiver (20/s keeps a burst of 1: at most 20 in any second)."""
    return max(1, int(per_second / 20))


class AcceptMeter:
    """Messages the receiver accepted per second, over the last second or two."""

    __slots__ = ("_second", "_count", "_previous")

    def __init__(self) -> None:
        self._second = 0
        self._count = 0
        self._previous = 0

    def note(self, now: float) -> None:
        second = int(now)
        if second != self._second:
            self._previous = self._count if second == self._second + 1 else 0
            self._second, self._count = second, 0
        self._count += 1

    def rate(self, now: float) -> float:
        second = int(now)
        if second == self._second:
            return (self._previous + self._count) / (1.0 + now - second)
        return self._count / (1.0 + now - second) if second == self._second + 1 else 0.0


class Destination:
    def __init__(self, key: str, answer: MxAnswer, policy: Policy, *, connector: Connector,
                 port: int, done: Done, hold: Callable[[Job, int], None], clock: Clock,
                 patterns: Patterns | None = None, budget: Budget | None = None, smtp: Smtp = Smtp(),
                 share: "Share | None" = None, give_back: Callable[[Job], None] | None = None):
        self.key = key
        self._give_back = give_back  # shutdown: a job that never reached the wire, back to the broker
        self.domain = ""  # one recipient domain it serves (rules are found again by it on reload)
        self.answer = answer
        self._connector = connector
        self._port = port
        self._done = done
        self._hold = hold
        self._time = clock  # timers, sleeps, monotonic time
        self._clock = clock.wall  # the wall time: limits, ages
        self.patterns = patterns or Patterns()
        self._deadline = smtp.delivery_deadline  # seconds one attempt may take, connecting included
        self._mx_hosts = smtp.max_mx_hosts
        self._mx_addresses = smtp.max_addresses_per_mx
        self.share = share  # a provider's connection limit over all its destinations (mta.destinations.share)
        if share is not None:
            share.members.add(self)
        self._budget = budget if budget is not None else Budget(UNLIMITED_FDS_BUDGET)  # the process's connection slots
        self.single: deque[Job] = deque()
        self.bulk: FairQueue[Job] = FairQueue(campaign)
        self._bulk_busy = 0  # workers holding a bulk job
        self._unpaced = 0  # workers holding a job that has no rate slot yet
        self._single_seen: float | None = None  # last single-lane message; None: long ago
        self._idle: deque[tuple[float, asyncio.Future]] = deque()  # (deadline, waiter) of idle workers, oldest first
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_at = 0.0
        self.connected = 0
        self._opening = 0
        self.tasks: set[asyncio.Task] = set()
        self.last_error: str | None = None
        self.closing = False
        self.unreachable_since: float | None = None
        self.probe = PROBE_FIRST
        self.held = HeldLedger()
        self.accepted = AcceptMeter()
        now = clock.wall()
        self.last_push = now
        self.state = DestinationState(now)
        self.throttle: Policy | None = None  # reduced limits while in backoff
        self.base = policy
        self.policy = policy
        self.window = ConnectionWindow(policy.connection_limit, start=min(START_CONNECTIONS, policy.connection_limit))
        self.adaptive = AdaptiveRate(policy.max_message_rate.per_second)
        rate = policy.max_message_rate
        self.message_rate = Gcra(rate, burst=message_burst(rate.per_second))  # bulk's share
        self.single_rate = Gcra(rate, burst=1)  # the single lane's reserved share
        self.connection_rate = Gcra(policy.max_connection_rate, burst=policy.connection_limit)
        self.apply(policy)

    # ---- limits

    def apply(self, policy: Policy) -> None:
        """New rules (start or reload); running sessions finish under them."""
        self.base = policy
        self._limits(self._clock())

    def _limits(self, now: float) -> None:
        """Put the limits in force: the rules, reduced by a throttle while in backoff,
        the message rate further by what receivers accepted."""
        policy = self.base
        if self.state.mode is Mode.BACKOFF and self.throttle is not None:
            policy = merge(policy, self.throttle)
        self.policy = policy
        self.timeouts = timeouts_of(policy)
        self.window.set_limit(policy.connection_limit)
        self.adaptive.set_ceiling(policy.max_message_rate.per_second)
        self._rate(now)
        self.connection_rate.set_rate(policy.max_connection_rate, now, burst=policy.connection_limit)

    def _rate(self, now: float) -> None:
        per_second = self.policy.max_message_rate.per_second
        if self.adaptive.adapting:
            per_second = self.adaptive.current
        self._per_second = per_second
        share = self.policy.single_rate_share if self._single_seen is not None else 0.0
        bulk = per_second * (1 - share)
        self.message_rate.set_rate(Rate(bulk, 1.0), now, burst=message_burst(bulk))
        single = per_second * share if share > 0 else per_second
        self.single_rate.set_rate(Rate(single, 1.0), now, burst=message_burst(single))
        self._trim(now)

    def _trim(self, now: float) -> None:
        """After the rate dropped: hold what the ready queues can no longer send soon, so
        nothing stays unacknowledged for long at the lower rate."""
        limit = allowance(self._per_second, self.window.allowed)
        for ready in (self.bulk, self.single):
            while len(ready) > limit:
                job = ready.pop()
                self._waiting(-1)
                delay = hold_delay(len(ready) + 1, self._per_second, self.window.allowed, self.held.due_within(now))
                self.held.note(now, delay)
                self._hold(job, delay)

    @property
    def per_second(self) -> float:
        return self._per_second

    def _bulk_cap(self) -> int:
        """How many workers may hold bulk jobs: the window, less the single lane's reserve
        while single mail is about."""
        allowed = self.window.allowed
        if self._single_seen is None:
            return allowed
        return max(1, allowed - min(self.policy.single_connections, allowed - 1))

    def _single_about(self, now: float, arriving: bool) -> None:
        """Keep the single lane's reserve while single mail comes, drop it after a quiet
        `SINGLE_RECENT` seconds."""
        if arriving:
            if self._single_seen is None:
                self._single_seen = now
                self._rate(now)
            self._single_seen = now
        elif self._single_seen is not None and now - self._single_seen > SINGLE_RECENT:
            self._single_seen = None
            self._rate(now)

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
        if transition.source is not transition.target or transition.target is Mode.BACKOFF:
            log.warning("%s: %s -> %s (%s)", self.key, transition.source, transition.target, transition.reason)
        if transition.source is Mode.BACKOFF or transition.target is Mode.BACKOFF:
            if self.state.mode is Mode.NORMAL:
                self.throttle = None
            self._limits(now)
        if self.state.mode is Mode.PAUSED:
            self.hold_all(now)

    def suspend(self, now: float, until: float | None, reason: str) -> None:
        """Send nothing until ``until`` (None: until resumed); queued mail is held."""
        self._moved(self.state.pause(now, until, reason), now)

    def back_off(self, now: float, until: float, limits: Policy, reason: str) -> None:
        """Reduced limits until ``until``."""
        self.throttle = limits
        transition = self.state.backoff(now, until, reason)
        if transition is None and self.state.mode is Mode.BACKOFF:
            self._limits(now)  # same end, maybe other limits
        self._moved(transition, now)

    def resume(self, now: float, reason: str) -> bool:
        try:
            self._moved(self.state.resume(now, reason), now)
        except IllegalTransition:
            return False
        return True

    def hold_all(self, now: float) -> None:
        for job in self.drain():
            self._hold_paused(job, now)

    def _hold_paused(self, job: Job, now: float) -> None:
        state = self.state
        remaining = state.until - now if state.until is not None else None
        delay = paused_delay(remaining, now - state.since, self.per_second, self.held.ahead(now))
        self.held.note(now, delay)
        self._hold(job, delay)

    # ---- the ready queue

    @property
    def queued(self) -> int:
        return len(self.single) + len(self.bulk)

    @property
    def workers(self) -> int:
        return self.window.in_use

    @property
    def idle_workers(self) -> int:
        """Workers waiting for mail on an open session."""
        return sum(not waiter.done() for _, waiter in self._idle)

    def forgettable(self, now: float) -> bool:
        """Nothing here that a new destination would not start with: no mail, no connection,
        no pause or throttle, no held mail due back, and no mail for `FORGET_AFTER` (by then
        an adapted rate has climbed back and a learned connection limit is asked again)."""
        if now - self.last_push < FORGET_AFTER or self.tasks or self.queued:
            return False
        self.refresh(now)  # a pause or throttle whose time is over ends now
        return self.state.mode is Mode.NORMAL and not self.held.ahead(now)

    def push(self, job: Job) -> None:
        now = self._clock()
        self.last_push = now
        self.refresh(now)
        self._single_about(now, job.lane == "single")
        if self.state.mode is Mode.PAUSED:
            self._hold_paused(job, now)
            return
        bulk = job.lane != "single"
        ready = self.bulk if bulk else self.single
        # Slow: mind each message's wait, also when an idle worker would take it at once (it
        # would wait for its slot holding the delivery unacknowledged).
        if self._per_second * MAX_WAIT < 2 * PER_CONNECTION:
            next_slot = self.message_rate.check(now).retry_after
            if not bulk:  # single mail may also take its own share
                next_slot = min(next_slot, self.single_rate.check(now).retry_after)
            delay = slow_hold(next_slot, len(ready) + self._unpaced, self._per_second)
            if delay is not None:
                self.held.note(now, delay)
                self._hold(job, delay)
                return
        if self.share is not None:  # its provider's rate, over all the provider's destinations
            delay = self._shared_hold(now, bulk)
            if delay is not None:
                self._hold_for_share(job, now, delay)
                return
        if not bulk or self._bulk_busy < self._bulk_cap():
            while self._idle:
                _, waiter = self._idle.popleft()
                if not waiter.done():
                    self._bulk_busy += bulk
                    self._unpaced += 1
                    self._waiting(1)
                    waiter.set_result(job)
                    return
        limit = allowance(self.per_second, self.window.allowed)
        # Each bulk campaign gets its own allowance (within twice the destination's), so a
        # big campaign in memory does not push a small one out to the delay queues.
        queued = self.bulk.count(campaign(job)) if bulk and len(ready) < 2 * limit else len(ready)
        if queued >= limit:
            delay = hold_delay(queued, self.per_second, self.window.allowed, self.held.due_within(now))
            self.held.note(now, delay)
            self._hold(job, delay)
            return
        ready.append(job)
        self._waiting(1)
        self._grow()

    def _waiting(self, change: int) -> None:
        """Messages of this destination in memory without a rate slot (queued, or taken and
        not paced) changed: its provider's share counts them over all its destinations."""
        share = self.share
        if share is not None:
            share.queued += change

    def _put_back(self, job: Job) -> None:
        """A job taken from the ready queue goes back to its front, unpaced."""
        (self.single if job.lane == "single" else self.bulk).appendleft(job)
        self._waiting(1)

    def _shared_hold(self, now: float, bulk: bool) -> int | None:
        """None when the provider's rate sends one more message of this destination soon,
        else how long to hold it: all the provider's destinations drain through that one
        rate, so the backlog that counts is theirs together (single mail only has its own
        ahead of it: it takes the next slot). The exact next slot is asked for only when a
        bound on it (one booked per session, each worker paces one job at a time) does not
        already settle it."""
        share = self.share
        rate = share.per_second
        queued = share.queued if bulk else len(self.single)
        booked = (max(share.in_use, share.limit) + 1) / rate if rate > 0 else MAX_WAIT
        if shared_fits(booked, queued, rate, share.limit):
            return None
        next_slot = share.rate.check(now).retry_after
        if shared_fits(next_slot, queued, rate, share.limit):
            return None
        return shared_hold(next_slot, queued, rate, share.held.due_within(now))

    def _hold_for_share(self, job: Job, now: float, delay: int) -> None:
        self.held.note(now, delay)
        self.share.held.note(now, delay)
        self._hold(job, delay)

    def _grow(self) -> None:
        """Another worker, if jobs wait that no connecting worker will take, the window
        has room (for bulk: room outside the single lane's reserve) and the process's
        connection budget has a slot; without a slot the destination waits in line for one
        (`_granted`), its jobs staying in the ready queue."""
        if self._wants_worker() and self._budget.acquire(self.key, bool(self.single), self._granted):
            if not self._start_worker():
                self._budget.release(self.key)

    def _wants_worker(self) -> bool:
        if self.queued <= self._opening or self.closing or self.state.mode is Mode.PAUSED:
            return False
        if not self.single and self.window.in_use >= self._bulk_cap():
            return False
        if self.window.available <= 0:
            return False
        if self.connected and self.connection_rate.check(self._clock()).retry_after > MAX_WAIT:
            return False  # the open sessions carry the mail until max_connection_rate allows another
        if self.share is not None and self.share.full:
            self.share.wait(self)  # the provider's sessions are all in use: in line for one
            return False
        return True

    def share_granted(self) -> None:
        """The provider's share has room again: start a worker if one is still wanted."""
        self._grow()

    def close_one_idle(self) -> bool:
        """Give up one idle session (another destination of the provider waits for it)."""
        while self._idle:
            _, waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return True
        return False

    def _granted(self) -> bool:
        """A budget slot is this destination's turn: a worker takes it if one is still wanted."""
        return self._wants_worker() and self._start_worker()

    def _start_worker(self) -> bool:
        """Start a worker on a budget slot taken for it; False leaves the slot to the caller."""
        if not self.window.try_open():
            return False
        if self.share is not None:
            self.share.take()
        self._spawn()
        return True

    def _spawn(self) -> None:
        task = asyncio.get_running_loop().create_task(self._work(), name=f"worker {self.key}")
        self.tasks.add(task)
        task.add_done_callback(self._worker_ended)

    def _worker_ended(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        self.window.closed()
        if self.share is not None:
            self.share.give_back()
        self._budget.release(self.key)  # its session is closed: the slot goes to whoever waits first
        if self.share is not None:
            self.share.serve()
        if not task.cancelled() and task.exception() is not None:
            log.error("worker for %s crashed: %r; its job is retried", self.key, task.exception())
        if self.queued and self.state.mode is not Mode.PAUSED:
            self._grow()

    def _take(self) -> Job | None:
        """The next job for a worker; it counts as unpaced (queued, for a slow destination)
        from here until `_pace` books its slot."""
        if self.single:
            self._unpaced += 1
            return self.single.popleft()
        if self.bulk and self._bulk_busy < self._bulk_cap():
            self._bulk_busy += 1
            self._unpaced += 1
            return self.bulk.popleft()
        return None

    def _release(self, job: Job) -> None:
        """A worker is done with ``job`` (sent, held, or put back)."""
        if job.lane != "single":
            self._bulk_busy -= 1

    def close_idle(self) -> None:
        """Shutdown: workers finish the transaction they are in and take no more."""
        self.closing = True
        for _, waiter in self._idle:
            if not waiter.done():
                waiter.set_result(None)
        self._idle.clear()

    async def _next(self, timeout: float) -> Job | None:
        job = self._take()
        if job is not None or timeout <= 0 or self.closing:
            return job
        if self.share is not None and self.share.wanted_by_other(self):
            return None  # another destination of the provider waits for this session's slot
        waiter = asyncio.get_running_loop().create_future()
        # No wait_for nor timer per wait: the waiter and its deadline join the idle list,
        # push() serves it from there (skipping done ones), and one timer per destination
        # gives None to those whose idle_timeout ran out.
        deadline = self._time.now() + timeout
        self._idle.append((deadline, waiter))
        if self._idle_timer is None or self._idle_at > deadline:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            self._idle_at = deadline
            self._idle_timer = self._time.call_at(deadline, self._idle_expired)
        self._budget.idle(waiter, self.key)  # a full budget closes the least recently used idle session
        try:
            return await waiter
        finally:
            self._budget.busy(waiter)

    def _idle_expired(self) -> None:
        """Idle workers whose time ran out get None (and give their connection up)."""
        self._idle_timer = None
        now = self._time.now()
        left: deque[tuple[float, asyncio.Future]] = deque()  # at most one per worker
        for deadline, waiter in self._idle:
            if waiter.done():
                continue
            if deadline <= now:
                waiter.set_result(None)
            else:
                left.append((deadline, waiter))
        self._idle = left
        if left:
            self._idle_at = min(deadline for deadline, _ in left)
            self._idle_timer = self._time.call_at(self._idle_at, self._idle_expired)

    def drain(self) -> list[Job]:
        """Everything not yet on the wire (shutdown, lost broker, pause)."""
        jobs = list(self.single) + list(self.bulk)
        self.single.clear()
        self.bulk.clear()
        self._waiting(-len(jobs))
        return jobs

    # ---- a worker

    async def _work(self) -> None:
        session: Session | None = None
        sent = 0
        job: Job | None = None
        follow: Job | None = None  # the next job, its commands pipelined behind job's content
        carried: Job | None = None  # paced, never begun: its session broke under it
        sending: Job | None = None  # its content on the wire: the receiver may have it
        reconnecting = False  # this worker had a session before
        paced = True  # job (if any) has its rate slot booked: it no longer counts as waiting for one
        watchdog = Watchdog(self._time)
        clock = self._time
        try:
            while True:
                if session is not None and (self.window.excess or self.state.mode is Mode.PAUSED
                                            or (self.share is not None and self.share.yields(self))):
                    return  # the window shrank, the destination paused or another of the provider
                    # waits with none while this one has several: give the slot back
                if carried is not None:
                    job, carried = carried, None
                    paced = True  # its rate slot was booked when it was pipelined
                else:
                    job = await self._next(self.policy.idle_timeout if session is not None else 0)
                    if job is None:
                        return
                    paced = False
                deadline = clock.now() + self._deadline  # the attempt starts: connect + transaction
                if session is None and reconnecting and self.share is not None and self.share.wanted_by_other(self):
                    # The provider's sessions take turns: this one reconnects after the one in line.
                    self._put_back(job)
                    if not paced:
                        self._unpaced -= 1
                        self._waiting(-1)
                    self._release(job)
                    job = None
                    self.share.wait(self, close_idle=False)
                    return
                if session is None:
                    reconnecting = True
                    self._opening += 1
                    try:
                        session = await self._open(job, deadline)
                    finally:
                        self._opening -= 1
                    if session is None:
                        if not paced:
                            self._unpaced -= 1
                            self._waiting(-1)
                        self._release(job)
                        job = None
                        return
                    session.on_dot = watchdog.dot_read
                    sent = 0
                if not paced:
                    pacing = clock.now()
                    paced = True  # booked by _pace before any wait
                    job = await self._pace(job)
                    if job is None:  # held: the provider's rate is booked too far ahead
                        continue
                    deadline += clock.now() - pacing  # the wait for a rate slot is not the attempt's
                if self.state.mode is Mode.PAUSED:  # paused while this job waited for its turn
                    self._hold_paused(job, self._clock())
                    self._release(job)
                    job = None
                    return
                if abandoned(job):  # its channel closed while it waited: the broker has it again
                    self._release(job)
                    job = None
                    continue
                reply = await self._begin(session, job, True, watchdog, deadline)
                while reply is None:  # the receiver waits for job's content
                    follow = self._follow(job, sent, session)
                    ahead = None
                    if follow is not None:
                        ahead = _commands(session, follow)
                    sending = job
                    reply, cut = await self._finish(session, job, ahead if isinstance(ahead, tuple) else None,
                                                    watchdog, deadline)
                    done, job, sending = job, None, None
                    self._settle(session, done, reply)
                    sent += 1
                    if follow is None:
                        break
                    job, follow = follow, None
                    deadline = min(watchdog.then, clock.now() + self._deadline)  # from the reply to the dot
                    if isinstance(ahead, Reply):  # refused here: nothing went out for it
                        reply = ahead
                    elif cut is not None:  # its replies, read behind the message's, were cut short
                        reply = cut
                    elif not session.usable:  # no reply to the dot: the next one was never begun
                        carried, job = job, None
                    elif abandoned(job):  # its channel closed meanwhile: the receiver drops it when we hang up
                        session.usable = False
                        self._release(job)
                        job = None
                        break
                    elif self.state.mode is Mode.PAUSED:  # by the reply to the message before it
                        session.usable = False  # hang up rather than send it: the receiver drops it
                        self._hold_paused(job, self._clock())
                        self._release(job)
                        job = None
                        return
                    else:
                        reply = await self._begin(session, job, False, watchdog, deadline)
                if job is not None:  # refused (or failed) before its content
                    done, job = job, None
                    self._settle(session, done, reply)
                    sent += 1
                if not session.usable or sent >= self.policy.max_deliveries_per_connection:
                    await self._close(session)
                    session = None
        finally:
            watchdog.stop()
            if job is not None and not paced:  # taken, never paced: no longer waiting here
                self._unpaced -= 1
                self._waiting(-1)
            for left in (job, follow, carried):
                if left is None:
                    continue
                if left is sending and watchdog.dot is not None:  # answered before the shutdown cut in
                    self._settle(session, left, watchdog.dot)
                    continue
                self._release(left)
                if left is sending:  # cancelled after its content went out: the outcome is unknown
                    self._done(left, Reply(None, "delivery interrupted (shutdown)", "message"), None, None, None)
                elif self._give_back is not None:  # cut off before its content went out: no attempt
                    self._give_back(left)
                else:  # the same without an engine to hand it to: the broker redelivers it
                    book, tag = left.delivery
                    book.requeue.append(tag)
            if session is not None:
                await self._close(session)

    async def _begin(self, session: Session, job: Job, write: bool, watchdog: Watchdog,
                     deadline: float) -> Reply | None:
        """MAIL, RCPT and DATA for ``job`` (``write`` False: they went out pipelined, read
        the replies): None when the receiver waits for the content, else the outcome."""
        try:
            commands = None
            if write:
                commands = _commands(session, job)
                if isinstance(commands, Reply):
                    return commands
            watchdog.arm(deadline)
            try:
                return await session.begin(commands)
            finally:
                watchdog.deadline = NEVER  # disarm, inline: this runs twice per message
        except SessionFailed as exc:
            return exc.reply
        except asyncio.CancelledError:
            if not watchdog.expired():
                session.usable = False  # shutdown cut a step short: no QUIT into replies still due
                raise
            return self._out_of_time(session, "mail", "before the message was sent")
        except Exception as exc:  # a bug must cost one attempt, not the message
            return self._crashed(session, job, exc)

    async def _finish(self, session: Session, job: Job, ahead: tuple[bytes, bytes] | None,
                      watchdog: Watchdog, deadline: float) -> tuple[Reply, Reply | None]:
        """``job``'s content (and ``ahead``, the next transaction's commands); its outcome,
        and the next transaction's when reading its replies was cut short after the reply
        to ``job``'s end of data (which stays ``job``'s outcome: the receiver may have
        accepted it, and it must not be sent again)."""
        try:
            watchdog.await_dot(deadline, self._deadline if ahead is not None else None)
            try:
                return await session.finish(job.data, ahead), None
            finally:
                watchdog.deadline = NEVER  # disarm, inline: this runs twice per message
        except SessionFailed as exc:
            return exc.reply, None
        except asyncio.CancelledError:
            if not watchdog.expired():
                session.usable = False  # shutdown cut a step short: no QUIT into replies still due
                raise  # the worker settles job by watchdog.dot if it came
            if watchdog.dot is not None:  # the next transaction's deadline
                return watchdog.dot, self._out_of_time(session, "mail", "before the message was sent")
            return self._out_of_time(session, "message", "waiting for the reply to the message"), None
        except Exception as exc:  # a bug must cost one attempt, not the message
            crashed = self._crashed(session, job, exc)
            return (watchdog.dot, crashed) if watchdog.dot is not None else (crashed, None)

    def _out_of_time(self, session: Session, phase: str, where: str) -> Reply:
        session.usable = False  # a step was cut short: the session's state is unknown
        return Reply(None, f"delivery deadline of {Duration(self._deadline)} reached {where}", phase)

    def _crashed(self, session: Session, job: Job, exc: Exception) -> Reply:
        log.exception("%s: delivery of %s failed unexpectedly; it is retried", self.key, job.id)
        session.usable = False
        return Reply(None, f"internal error: {exc.__class__.__name__}", "message")

    def _settle(self, session: Session, job: Job, reply: Reply) -> None:
        self._release(job)
        reply = session.stamp(reply)
        verdict = self._feedback(reply, self._clock())
        self._done(job, reply, session.mx, session.ip, verdict)

    def _follow(self, current: Job, sent: int, session: Session) -> Job | None:
        """The job to pipeline behind ``current``'s content (RFC 2920), one write for both:
        only one that is ready with its rate slot due now (never one in the future), and
        only while the destination keeps going (not closing, paused or shrinking) and the
        session has room for it. None: ``current`` goes alone."""
        if (not session.pipelining or self.closing or self.window.excess or self.state.mode is Mode.PAUSED
                or sent + 2 > self.policy.max_deliveries_per_connection):
            return None
        if self.single:
            job = self.single.popleft()
        elif self.bulk and self._bulk_busy - (current.lane != "single") < self._bulk_cap():
            self._bulk_busy += 1  # this worker holds two bulk jobs until current is settled
            job = self.bulk.popleft()
        else:
            return None
        now = self._clock()
        if self.adaptive.adapting:
            self.refresh(now)
        if ((self.message_rate.take(now).allowed or (job.lane == "single" and self.single_rate.take(now).allowed))
                and (self.share is None or self.share.rate.take(now).allowed)):
            self._waiting(-1)
            return job
        if job.lane == "single":  # its turn is later: back to the front, as if never taken
            self.single.appendleft(job)
        else:
            self.bulk.appendleft(job)
        self._release(job)
        return None

    def _feedback(self, reply: Reply, now: float) -> bool | None:
        """What one reply teaches about the destination; returns a pattern's verdict."""
        if reply.ok:
            self.accepted.note(now)
            self.window.on_success(now)
            self.state.on_success(now)
            if self.queued:
                self._grow()
            return None
        verdict = None
        rule = self.patterns.find(reply.code, parse_enhanced(reply.text), reply.text) if self.patterns else None
        if rule is not None:
            if rule.action in ("suspend", "throttle"):  # the operator's reaction replaces ours
                self._apply_rule(rule, reply, now)
                return None
            verdict = rule.action == "bounce"
        signal = slow_down(reply.code, reply.text)
        if signal == "connections":
            self.window.on_too_many(now)
        elif signal == "rate":
            if self.adaptive.on_rate_limited(now, self.accepted.rate(now)):
                self._rate(now)
                log.info("%s: receiver asks to slow down (%s); message rate now %.2f/s",
                         self.key, reply, self.adaptive.current)
        elif reply.code is None and reply.phase != "message":
            self.window.on_pushback()  # dropped or timed out mid-session
        return verdict

    def _apply_rule(self, rule: PatternRule, reply: Reply, now: float) -> None:
        reason = f"{rule.describe()}: {reply}"
        if rule.action == "suspend":
            self.suspend(now, now + rule.duration, reason)
        else:
            self.back_off(now, now + rule.duration, rule.payload, reason)

    async def _pace(self, job: Job) -> Job | None:
        """Wait for the job's turn in the message rate; returns the job to send, which is a
        single-lane job that arrived meanwhile rather than the bulk job it waited with, or
        None when the provider's rate has no slot within `MAX_WAIT` (the job is held: it
        does not wait that long unacknowledged, and nothing was tried)."""
        now = self._clock()
        self._unpaced -= 1  # booked below, before any wait
        self._waiting(-1)
        if self.adaptive.adapting:
            self.refresh(now)  # the adapted rate climbs back in steps
        shared = 0.0
        if self.share is not None:  # the provider's rate over all its destinations, first
            shared = self.share.rate.reserve(now)
            if shared > MAX_WAIT:  # booked far ahead by the provider's other destinations (or a slower rate)
                self.share.rate.unreserve()
                self._hold_for_share(job, now, shared_hold(shared, self.share.queued, self.share.per_second,
                                                           self.share.held.due_within(now)))
                self._release(job)
                return None
        if job.lane == "single":
            # Bulk's share when it has room (bulk is idle), else the single lane's own.
            if self.message_rate.check(now).allowed:
                self.message_rate.take(now)
                wait = 0.0
            else:
                wait = self.single_rate.reserve(now)
            wait = max(wait, shared)
            if wait > 0:
                await self._time.sleep(wait)
            return job
        wait = max(self.message_rate.reserve(now), shared)
        if wait > 0:
            await self._time.sleep(wait)
        if self.single:
            self.bulk.appendleft(job)
            self._release(job)
            return self.single.popleft()
        return job

    async def _close(self, session: Session) -> None:
        self.connected -= 1
        await session.close()

    async def _open(self, job: Job, deadline: float) -> Session | None:
        """A session to the first host that takes one, in MX order (at most `max_mx_hosts`
        hosts and `max_addresses_per_mx` addresses of each, within the attempt's deadline).
        On failure the job gets the last reply (or goes back to the queue when the receiver
        only said "too many connections" to this one while others are up); with nobody else
        connected the destination is dead: paused for a probe interval, its queue held."""
        if self._budget.should_yield(self.key):
            # Single mail or a destination without any connection waits for a budget slot:
            # this reconnect gives its slot up; the job goes back to the front of the queue.
            self._put_back(job)
            return None
        if not await self._connection_slot(job):
            return None
        last = Reply(None, "no MX host to try", "connect")
        last_host = last_ip = None
        tls = self.policy.tls
        for host in self.answer.hosts[:self._mx_hosts]:
            for ip in host.addresses[:self._mx_addresses]:
                left = deadline - self._time.now()
                if left <= 0:
                    last = Reply(last.code, f"{last.text} (delivery deadline of {Duration(self._deadline)} "
                                            f"reached before the other MX hosts were tried)", last.phase)
                    return self._unreachable(job, last, last_host, last_ip)
                try:
                    session = await self._connector.open(host.name, ip, host.port or self._port,
                                                         tls=tls, timeouts=self._opening_timeouts(left))
                except SessionFailed as exc:
                    last, last_host, last_ip = exc.reply, host.name, ip
                    self.last_error = f"{host.name} [{ip}]: {last}"
                    log.debug("%s: %s [%s] failed at %s: %s", self.key, host.name, ip, last.phase, last)
                    continue
                self.connected += 1
                self.unreachable_since = None
                self.probe = PROBE_FIRST
                return session
        return self._unreachable(job, last, last_host, last_ip)

    def _opening_timeouts(self, left: float) -> Timeouts:
        """The timeouts of opening a session (connect with the banner, EHLO, STARTTLS, AUTH):
        all of it within the ``left`` seconds of the attempt, each step within its own; the
        transaction's stay as they are (the watchdog bounds those, and the session keeps
        them for later messages)."""
        t = self.timeouts
        return Timeouts(connect=min(t.connect, left), ehlo=min(t.ehlo, left), starttls=min(t.starttls, left),
                        mail_from=t.mail_from, rcpt_to=t.rcpt_to, data=t.data, data_dot=t.data_dot, opening=left)

    async def _connection_slot(self, job: Job) -> bool:
        """Wait for `max_connection_rate` to allow a connection, if that is soon (within
        `MAX_WAIT`); else the job does not wait unacknowledged: with sessions up it goes back
        to the queue for them, without any it is held (with the rest of the queue) until the
        slot. False: the job was handed on."""
        while True:
            now = self._clock()
            decision = self.connection_rate.take(now)
            if decision.allowed:
                return True
            wait = decision.retry_after
            if wait <= MAX_WAIT:
                await self._time.sleep(wait)
                continue
            if self.connected > 0:
                self._put_back(job)
                return False
            log.info("%s: next connection allowed by max_connection_rate in %.0fs; %d message(s) held "
                     "until then", self.key, wait, 1 + self.queued)
            for held in [job] + self.drain():
                delay = paused_delay(wait, 0.0, self.per_second, self.held.ahead(now))
                self.held.note(now, delay)
                self._hold(held, delay)
            return False

    def _unreachable(self, job: Job, last: Reply, host: str | None, ip: str | None) -> None:
        now = self._clock()
        verdict = self._feedback(last, now) if last.code is not None else None
        if self.state.mode is Mode.PAUSED:  # a suspend pattern matched the refusal
            self._hold_paused(job, now)
            return None
        if verdict is not True and self.connected > 0 and slow_down(last.code, last.text) == "connections":
            # The receiver is busy, not gone, and never saw the message: the open sessions take it.
            self._put_back(job)
            return None
        self._done(job, last, host, ip, verdict)
        if last.phase == "auth":  # the host answered but refused our credentials: not dead
            self.suspend(now, now + PROBE_FIRST, f"authentication refused: {last}")
            return None
        if last.phase not in ("connect", "ehlo"):  # it answered; our TLS policy refused it
            return None
        self.window.on_pushback()
        if self.connected > 0:
            return None
        if self.unreachable_since is None:
            self.unreachable_since = now
        self.window.collapse()
        probe = self.probe
        self.probe = min(PROBE_MAX, probe * 2)
        queued = self.queued
        self.suspend(now, now + probe, f"no host accepted a connection: {self.last_error}")
        log.warning("%s: destination unreachable (%s); %d queued message(s) held, one connection "
                    "probes it again in %.0fs", self.key, self.last_error, queued, probe)
        return None
