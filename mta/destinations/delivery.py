"""Destinations and their connection workers.

A destination (an MX site, a provider, or a configured domain) owns a ready queue per lane
holding only what it can send soon (shaper.allowance; the rest is held in a delay queue)
and up to its connection window of workers (mta.destinations.worker: a task that holds one
SMTP session and carries job after job over it). No task per message: a job is handed
from the queue straight to a waiting worker, and idle workers wait in one line with one
timer per destination for their `idle_timeout`.

What the destination may do is decided in `shaper` (shaper.destination: admission, the
next job and its rate slot, feedback, probing) and only carried out here, with the time
read from the one clock (mta.clock): every limit, timer and pause runs on its monotonic
time, so setting the system clock moves none of them; what people read (`state`,
`statistics`) and what they give (an operator's pause's end) is wall time, converted here:

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
  is about; from the first single message until `SINGLE_RECENT` seconds after the last
  (shaper.lanes), bulk leaves `single_connections` of the window and `single_rate_share` of the rate to
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
* One attempt is bounded in time and in hosts tried (mta.destinations.worker).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import NamedTuple

from mta.clock import Clock
from mta.destinations.budget import Budget
from mta.destinations.gate import Gate
from mta.config import Policy, Smtp, merge
from mta.intake.message import Job
from mta.routing.mx import MxAnswer
from mta.destinations.worker import Worker
from mta.smtp.client import Reply
from mta.smtp.connector import Connector
from mta.smtp.session import Session
from shaper.allowance import HeldLedger
from shaper.budget import UNLIMITED_FDS_BUDGET
from shaper.destination import FORGET_AFTER, HAND, IDLE, PROBE_FIRST, QUEUE, DestinationCore  # noqa: F401  (FORGET_AFTER: the engine's)
from shaper.handoffs import Attempt, Held, Wait
from shaper.lanes import IdleWorkers
from shaper.patterns import Patterns
from shaper.replies import slow_down
from shaper.state import IllegalTransition, Mode, Transition
from shaper.statistics import Statistics, statistics

log = logging.getLogger("mta.delivery")


class ShownState(NamedTuple):
    """A destination's state as people read it: its times in wall-clock seconds."""
    mode: Mode
    reason: str
    since: float
    until: float | None


def campaign(job: Job) -> str:
    """Which bulk campaign a message belongs to: its first tag."""
    return job.tags[0] if job.tags else ""


class Destination:
    """One destination: its workers, their idle line and timer, its budget slots and provider
    share; `core` decides, this class carries out."""

    def __init__(self, key: str, answer: MxAnswer, policy: Policy, *, connector: Connector,
                 port: int, done: Callable[[Attempt], None], hold: Callable[[Held], None], clock: Clock,
                 patterns: Patterns | None = None, budget: Budget | None = None, smtp: Smtp = Smtp(),
                 share: "Share | None" = None, give_back: Callable[[Job], None] | None = None,
                 cluster: "Cluster | None" = None):
        self.key = key
        self._give_back = give_back  # shutdown: a job that never reached the wire, back to the broker
        self.domain = ""  # one recipient domain it serves (rules are found again by it on reload)
        self.answer = answer
        self._connector = connector
        self._port = port
        self._done = done  # attempts and holds go on as typed values (shaper.handoffs), to the engine's outcomes
        self._hold = hold
        self._time = clock  # timers, sleeps
        # monotonic: every limit, timer and pause; the loop's own clock when made on it (read
        # several times per message: `Clock.now` would look the loop up every time)
        try:
            self._now = clock.now_reader()
        except RuntimeError:  # made outside the loop (tests): found on each read
            self._now = clock.now
        self._wall = clock.wall  # what people read
        self._deadline = smtp.delivery_deadline  # seconds one attempt may take, connecting included
        self._mx_hosts = smtp.max_mx_hosts
        self._mx_addresses = smtp.max_addresses_per_mx
        self.share = share  # a provider's connection limit over all its destinations (mta.destinations.share)
        if share is not None:
            share.members.add(self)
        self._budget = budget if budget is not None else Budget(UNLIMITED_FDS_BUDGET)  # the process's connection slots
        self._idle = IdleWorkers()  # workers waiting for mail on an open session
        self._idle_timer: asyncio.TimerHandle | None = None
        self.connected = 0
        self._opening = 0
        self.tasks: set[asyncio.Task] = set()
        self.last_error: str | None = None
        self.closing = False
        # What the destination decides (shaper.destination); this class carries it out.
        self.core = DestinationCore(policy, clock.now(), hold=hold, moved=self._log_moved, merge=merge,
                                    campaign=campaign, patterns=patterns, share=share)
        self.gate = Gate(self, cluster) if cluster is not None else None  # limits across nodes
        self.single = self.core.lanes.single  # the single lane's ready queue: single mail waits

    # ---- what the core decides, as the engine and tests read it (ops read `statistics`)

    @property
    def patterns(self) -> Patterns:
        return self.core.patterns

    @patterns.setter
    def patterns(self, patterns: Patterns) -> None:
        self.core.patterns = patterns

    @property
    def policy(self) -> Policy:
        return self.core.policy

    @property
    def state(self) -> ShownState:
        """The mode, why, since and until when (wall time)."""
        state, wall = self.core.state, self._to_wall()
        return ShownState(state.mode, state.reason, wall(state.since), wall(state.until))

    def _to_wall(self) -> Callable[[float | None], float | None]:
        """Monotonic seconds -> wall-clock seconds, as the two clocks stand now."""
        offset = self._wall() - self._now()
        return lambda t: None if t is None else t + offset

    @property
    def held(self) -> HeldLedger:
        return self.core.held

    @property
    def queued(self) -> int:
        return self.core.lanes.queued

    @property
    def _unpaced(self) -> int:
        return self.core.lanes.unpaced

    @property
    def workers(self) -> int:
        return self.core.window.in_use

    def statistics(self) -> Statistics:
        """A snapshot of the destination now, and why its mail waits (shaper.statistics),
        with its sessions: all that `mta status` and the metrics read of it; its times in
        wall-clock seconds."""
        stats = statistics(self.core, self._now(), connections=self.connected, idle=self._idle.waiting(),
                           last_error=self.last_error)
        wall = self._to_wall()
        stats.since, stats.until, stats.unreachable_since = (wall(stats.since), wall(stats.until),
                                                             wall(stats.unreachable_since))
        return stats

    # ---- limits and state

    def apply(self, policy: Policy) -> None:
        """New rules (start or reload); running sessions finish under them."""
        self.core.apply(policy, self._now())

    def refresh(self) -> None:
        """Let time act: end a pause or backoff whose time has come, step the rate up."""
        self.core.refresh(self._now())

    def _log_moved(self, transition: Transition) -> None:
        if transition.source is not transition.target or transition.target is Mode.BACKOFF:
            log.warning("%s: %s -> %s (%s)", self.key, transition.source, transition.target, transition.reason)
        if self.gate is not None:
            self.gate.moved(transition)  # the other nodes learn it (mta.destinations.gate)

    def suspend(self, until: float | None, reason: str) -> None:
        """Send nothing until ``until`` (wall-clock seconds, as an operator gives it; None:
        until resumed); queued mail is held. The pause runs on monotonic time from here."""
        now = self._now()
        self.core.suspend(now, None if until is None else now + (until - self._wall()), reason)

    def resume(self, reason: str) -> bool:
        try:
            self.core.resume(self._now(), reason)
        except IllegalTransition:
            return False
        return True

    def forgettable(self) -> bool:
        """See shaper.destination.DestinationCore.forgettable."""
        return self.core.forgettable(self._now(), bool(self.tasks))

    def drain(self) -> list[Job]:
        """Everything not yet on the wire (shutdown, lost broker, pause)."""
        return self.core.drain()

    # ---- the ready queue

    def push(self, job: Job) -> None:
        now = self._now()
        core = self.core
        core.refresh(now)
        decision = core.admit(job, now)
        if decision is HAND:
            waiter = self._idle.pop_waiting()
            if waiter is not None:
                core.handed(job)
                waiter.set_result(job)
                return
            decision = core.queue(job, now)
        if decision is QUEUE:
            self._grow()
        else:
            self._hold(Held(job, decision.delay, decision.reason))

    def _grow(self) -> None:
        """Another worker, if jobs wait that no connecting worker will take, the window
        has room (for bulk: room outside the single lane's reserve) and the process's
        connection budget has a slot; without a slot the destination waits in line for one
        (`_granted`), its jobs staying in the ready queue."""
        if self._wants_worker() and self._budget.acquire(self.key, bool(self.single), self._granted):
            if not self._start_worker():
                self._budget.release(self.key)

    def _wants_worker(self) -> bool:
        if self.closing or not self.core.wants_connection(self._opening):
            return False
        if self.connected and not self.core.connection_soon(self._now()):
            return False  # the open sessions carry the mail until max_connection_rate allows another
        if self.share is not None and self.share.full:
            self.share.wait(self)  # the provider's sessions are all in use: in line for one
            return False
        return self.gate is None or not self.gate.refused()  # other nodes hold the leases: retried

    def share_granted(self) -> None:
        """The provider's share has room again: start a worker if one is still wanted."""
        self._grow()

    def close_one_idle(self) -> bool:
        """Give up one idle session (another destination of the provider waits for it)."""
        waiter = self._idle.pop_waiting()
        if waiter is None:
            return False
        waiter.set_result(None)
        return True

    def _granted(self) -> bool:
        """A budget slot is this destination's turn: a worker takes it if one is still wanted."""
        return self._wants_worker() and self._start_worker()

    def _start_worker(self) -> bool:
        """Start a worker on a budget slot taken for it; False leaves the slot to the caller."""
        if not self.core.window.try_open():
            return False
        if self.share is not None:
            self.share.take()
        self._spawn()
        return True

    def _spawn(self) -> None:
        task = asyncio.get_running_loop().create_task(Worker(self).run(), name=f"worker {self.key}")
        self.tasks.add(task)
        task.add_done_callback(self._worker_ended)

    def _worker_ended(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        self.core.window.closed()
        if self.share is not None:
            self.share.give_back()
        self._budget.release(self.key)  # its session is closed: the slot goes to whoever waits first
        if self.share is not None:
            self.share.serve()
        if not task.cancelled() and task.exception() is not None:
            log.error("worker for %s crashed: %r; its job is retried", self.key, task.exception())
        if self.queued and self.core.state.mode is not Mode.PAUSED:
            self._grow()

    def close_idle(self) -> None:
        """Shutdown: workers finish the transaction they are in and take no more."""
        self.closing = True
        for waiter in self._idle.clear():
            waiter.set_result(None)

    async def _next(self, timeout: float) -> Job | Wait | None:
        """What a worker does next (shaper.destination.DestinationCore.next_job): a job to
        send now, a `Wait` for its booked rate slot, or None: none came within ``timeout``
        (or the session's slot is wanted elsewhere), the worker ends."""
        handed = None
        while True:
            step = self.core.next_job(self._now(), handed)
            if step is not IDLE:
                return step
            handed = await self._idle_wait(timeout)
            if handed is None:
                return None

    async def _idle_wait(self, timeout: float) -> Job | None:
        """Wait on the open session for mail (`push` hands it over) for ``timeout`` seconds."""
        if timeout <= 0 or self.closing:
            return None
        if self.share is not None and self.share.wanted_by_other(self):
            return None  # another destination of the provider waits for this session's slot
        waiter = asyncio.get_running_loop().create_future()
        # No wait_for nor timer per wait: the waiter and its deadline join the idle line,
        # push() serves it from there, and one timer per destination gives None to those
        # whose idle_timeout ran out.
        if self._idle.add(self._now() + timeout, waiter):
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            self._idle_timer = self._time.call_at(self._idle.due, self._idle_expired)
        self._budget.idle(waiter, self.key)  # a full budget closes the least recently used idle session
        try:
            return await waiter
        finally:
            self._budget.busy(waiter)

    def _idle_expired(self) -> None:
        """Idle workers whose time ran out get None (and give their connection up)."""
        self._idle_timer = None
        for waiter in self._idle.expire(self._now()):
            waiter.set_result(None)
        if self._idle.due is not None:
            self._idle_timer = self._time.call_at(self._idle.due, self._idle_expired)

    # ---- what its workers report

    def _settle(self, session: Session, job: Job, reply: Reply) -> None:
        core = self.core
        core.lanes.release(job)
        if session.cipher is not None:  # (session.stamp, inline: once per message)
            reply = session.stamp(reply)
        now = self._now()
        if reply.ok:  # inline: once per message
            core.succeeded(now)
            if core.lanes.queued:
                self._grow()
            verdict = None
        else:
            verdict = self._refused(reply, now)
        self._done(Attempt(job, reply, session.mx, session.ip, verdict))

    def _refused(self, reply: Reply, now: float) -> bool | None:
        """What a refusal teaches the destination; returns a pattern's verdict."""
        verdict, slower = self.core.refused(reply, now)
        if self.gate is not None:
            self.gate.pushed_back(reply, slower)
        if slower:
            log.info("%s: receiver asks to slow down (%s); message rate now %.2f/s",
                     self.key, reply, self.core.adaptive.current)
        return verdict

    def _unreachable(self, job: Job, last: Reply, host: str | None, ip: str | None) -> None:
        now = self._now()
        core = self.core
        verdict = self._refused(last, now) if last.code is not None else None
        if core.state.mode is Mode.PAUSED:  # a suspend pattern matched the refusal
            core.hold_paused(job, now)
            return None
        if verdict is not True and self.connected > 0 and slow_down(last.code, last.text) == "connections":
            # The receiver is busy, not gone, and never saw the message: the open sessions take it.
            core.put_back(job)
            return None
        self._done(Attempt(job, last, host, ip, verdict))
        if last.phase == "auth":  # the host answered but refused our credentials: not dead
            core.suspend(now, now + PROBE_FIRST, f"authentication refused: {last}")
            return None
        if last.phase not in ("connect", "ehlo"):  # it answered; our TLS policy refused it
            return None
        core.window.on_pushback()
        if self.connected > 0:
            return None
        queued = self.queued
        probe = core.dead(now, f"no host accepted a connection: {self.last_error}")
        log.warning("%s: destination unreachable (%s); %d queued message(s) held, one connection "
                    "probes it again in %.0fs", self.key, self.last_error, queued, probe)
        return None
