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
from collections.abc import Callable

from mta.clock import Clock
from mta.destinations.budget import Budget
from mta.config import Policy, Smtp, merge
from mta.intake.message import Job
from mta.routing.mx import MxAnswer
from mta.settle.settler import abandoned
from mta.smtp.client import Connector, Reply, Session, SessionFailed, Timeouts
from shaper.allowance import MAX_WAIT, HeldLedger
from shaper.budget import UNLIMITED_FDS_BUDGET
from shaper.destination import FORGET_AFTER, HAND, PROBE_FIRST, QUEUE, DestinationCore, Hold  # noqa: F401
from shaper.lanes import IdleWorkers
from shaper.limiter import Gcra
from shaper.patterns import Patterns
from shaper.replies import slow_down
from shaper.state import DestinationState, IllegalTransition, Mode, Transition
from shaper.units import Duration
from shaper.window import ConnectionWindow

log = logging.getLogger("mta.delivery")

# Outcome callback: (job, reply, MX host name, IP address, permanent); the host is None
# before any was tried; permanent is a pattern's verdict (True bounce, False retry) or None.
Done = Callable[[Job, Reply, "str | None", "str | None", "bool | None"], None]

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
        self.core = DestinationCore(policy, clock.wall(), hold=hold, moved=self._log_moved, merge=merge,
                                    campaign=campaign, patterns=patterns, share=share)
        self.single = self.core.lanes.single
        self.bulk = self.core.lanes.bulk

    # ---- what the core decides, as the engine, ops and tests read it

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
    def state(self) -> DestinationState:
        return self.core.state

    @property
    def window(self) -> ConnectionWindow:
        return self.core.window

    @property
    def held(self) -> HeldLedger:
        return self.core.held

    @property
    def connection_rate(self) -> Gcra:
        return self.core.connection_rate

    @property
    def per_second(self) -> float:
        return self.core.per_second

    @property
    def queued(self) -> int:
        return self.core.lanes.queued

    @property
    def _unpaced(self) -> int:
        return self.core.lanes.unpaced

    @property
    def workers(self) -> int:
        return self.core.window.in_use

    @property
    def idle_workers(self) -> int:
        """Workers waiting for mail on an open session."""
        return self._idle.waiting()

    # ---- limits and state

    def apply(self, policy: Policy) -> None:
        """New rules (start or reload); running sessions finish under them."""
        self.core.apply(policy, self._clock())

    def refresh(self, now: float) -> None:
        """Let time act: end a pause or backoff whose time has come, step the rate up."""
        self.core.refresh(now)

    def _log_moved(self, transition: Transition) -> None:
        if transition.source is not transition.target or transition.target is Mode.BACKOFF:
            log.warning("%s: %s -> %s (%s)", self.key, transition.source, transition.target, transition.reason)

    def suspend(self, now: float, until: float | None, reason: str) -> None:
        """Send nothing until ``until`` (None: until resumed); queued mail is held."""
        self.core.suspend(now, until, reason)

    def back_off(self, now: float, until: float, limits: Policy, reason: str) -> None:
        """Reduced limits until ``until``."""
        self.core.back_off(now, until, limits, reason)

    def resume(self, now: float, reason: str) -> bool:
        try:
            self.core.resume(now, reason)
        except IllegalTransition:
            return False
        return True

    def hold_all(self, now: float) -> None:
        self.core.hold_all(now)

    def forgettable(self, now: float) -> bool:
        """See shaper.destination.DestinationCore.forgettable."""
        return self.core.forgettable(now, bool(self.tasks))

    def drain(self) -> list[Job]:
        """Everything not yet on the wire (shutdown, lost broker, pause)."""
        return self.core.drain()

    # ---- the ready queue

    def push(self, job: Job) -> None:
        now = self._clock()
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
            self._hold(job, decision.delay)

    def _grow(self) -> None:
        """Another worker, if jobs wait that no connecting worker will take, the window
        has room (for bulk: room outside the single lane's reserve) and the process's
        connection budget has a slot; without a slot the destination waits in line for one
        (`_granted`), its jobs staying in the ready queue."""
        if self._wants_worker() and self._budget.acquire(self.key, bool(self.single), self._granted):
            if not self._start_worker():
                self._budget.release(self.key)

    def _wants_worker(self) -> bool:
        if self.closing or not self.core.wants_connection(self._opening, self.connected, self._clock()):
            return False
        if self.share is not None and self.share.full:
            self.share.wait(self)  # the provider's sessions are all in use: in line for one
            return False
        return True

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
        task = asyncio.get_running_loop().create_task(self._work(), name=f"worker {self.key}")
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

    async def _next(self, timeout: float) -> Job | None:
        job = self.core.take()
        if job is not None or timeout <= 0 or self.closing:
            return job
        if self.share is not None and self.share.wanted_by_other(self):
            return None  # another destination of the provider waits for this session's slot
        waiter = asyncio.get_running_loop().create_future()
        # No wait_for nor timer per wait: the waiter and its deadline join the idle line,
        # push() serves it from there, and one timer per destination gives None to those
        # whose idle_timeout ran out.
        if self._idle.add(self._time.now() + timeout, waiter):
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
        for waiter in self._idle.expire(self._time.now()):
            waiter.set_result(None)
        if self._idle.due is not None:
            self._idle_timer = self._time.call_at(self._idle.due, self._idle_expired)

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
        core = self.core
        try:
            while True:
                if session is not None and (core.window.excess or core.state.mode is Mode.PAUSED
                                            or (self.share is not None and self.share.yields(self))):
                    return  # the window shrank, the destination paused or another of the provider
                    # waits with none while this one has several: give the slot back
                if carried is not None:
                    job, carried = carried, None
                    paced = True  # its rate slot was booked when it was pipelined
                else:
                    job = await self._next(core.policy.idle_timeout if session is not None else 0)
                    if job is None:
                        return
                    paced = False
                deadline = clock.now() + self._deadline  # the attempt starts: connect + transaction
                if session is None and reconnecting and self.share is not None and self.share.wanted_by_other(self):
                    # The provider's sessions take turns: this one reconnects after the one in line.
                    core.put_back(job)
                    if not paced:
                        core.unpaced(job)
                    core.lanes.release(job)
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
                            core.unpaced(job)
                        core.lanes.release(job)
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
                if core.state.mode is Mode.PAUSED:  # paused while this job waited for its turn
                    core.hold_paused(job, self._clock())
                    core.lanes.release(job)
                    job = None
                    return
                if abandoned(job):  # its channel closed while it waited: the broker has it again
                    core.lanes.release(job)
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
                        core.lanes.release(job)
                        job = None
                        break
                    elif core.state.mode is Mode.PAUSED:  # by the reply to the message before it
                        session.usable = False  # hang up rather than send it: the receiver drops it
                        core.hold_paused(job, self._clock())
                        core.lanes.release(job)
                        job = None
                        return
                    else:
                        reply = await self._begin(session, job, False, watchdog, deadline)
                if job is not None:  # refused (or failed) before its content
                    done, job = job, None
                    self._settle(session, done, reply)
                    sent += 1
                if not session.usable or sent >= core.policy.max_deliveries_per_connection:
                    await self._close(session)
                    session = None
        finally:
            watchdog.stop()
            if job is not None and not paced:  # taken, never paced: no longer waiting here
                core.unpaced(job)
            for left in (job, follow, carried):
                if left is None:
                    continue
                if left is sending and watchdog.dot is not None:  # answered before the shutdown cut in
                    self._settle(session, left, watchdog.dot)
                    continue
                core.lanes.release(left)
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
        core = self.core
        core.lanes.release(job)
        reply = session.stamp(reply)
        now = self._clock()
        if reply.ok:  # inline: once per message
            core.succeeded(now)
            if core.lanes.queued:
                self._grow()
            verdict = None
        else:
            verdict = self._refused(reply, now)
        self._done(job, reply, session.mx, session.ip, verdict)

    def _refused(self, reply: Reply, now: float) -> bool | None:
        """What a refusal teaches the destination; returns a pattern's verdict."""
        verdict, slower = self.core.refused(reply, now)
        if slower:
            log.info("%s: receiver asks to slow down (%s); message rate now %.2f/s",
                     self.key, reply, self.core.adaptive.current)
        return verdict

    def _follow(self, current: Job, sent: int, session: Session) -> Job | None:
        """The job to pipeline behind ``current``'s content (RFC 2920), one write for both
        (shaper.destination.DestinationCore.follow), only while not closing and on a
        session that pipelines. None: ``current`` goes alone."""
        if not session.pipelining or self.closing:
            return None
        return self.core.follow(current, sent, self._clock())

    async def _pace(self, job: Job) -> Job | None:
        """Wait for the job's turn in the message rate; returns the job to send, which is a
        single-lane job that arrived meanwhile rather than the bulk job it waited with, or
        None when the provider's rate has no slot within `MAX_WAIT` (the job is held: it
        does not wait that long unacknowledged, and nothing was tried)."""
        core = self.core
        wait = core.slot(job, self._clock())
        if wait.__class__ is Hold:
            self._hold(job, wait.delay)
            return None
        if wait > 0:
            await self._time.sleep(wait)
        return core.single_first(job)

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
            self.core.put_back(job)
            return None
        if not await self._connection_slot(job):
            return None
        last = Reply(None, "no MX host to try", "connect")
        last_host = last_ip = None
        tls = self.core.policy.tls
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
                self.core.reachable()
                return session
        return self._unreachable(job, last, last_host, last_ip)

    def _opening_timeouts(self, left: float) -> Timeouts:
        """The timeouts of opening a session (connect with the banner, EHLO, STARTTLS, AUTH):
        all of it within the ``left`` seconds of the attempt, each step within its own; the
        transaction's stay as they are (the watchdog bounds those, and the session keeps
        them for later messages)."""
        t = timeouts_of(self.core.policy)
        return Timeouts(connect=min(t.connect, left), ehlo=min(t.ehlo, left), starttls=min(t.starttls, left),
                        mail_from=t.mail_from, rcpt_to=t.rcpt_to, data=t.data, data_dot=t.data_dot, opening=left)

    async def _connection_slot(self, job: Job) -> bool:
        """Wait for `max_connection_rate` to allow a connection, if that is soon (within
        `MAX_WAIT`); else the job does not wait unacknowledged: with sessions up it goes back
        to the queue for them, without any it is held (with the rest of the queue) until the
        slot. False: the job was handed on."""
        core = self.core
        while True:
            wait = core.connection_wait(self._clock())
            if wait is None:
                return True
            if wait <= MAX_WAIT:
                await self._time.sleep(wait)
                continue
            if self.connected > 0:
                core.put_back(job)
                return False
            log.info("%s: next connection allowed by max_connection_rate in %.0fs; %d message(s) held "
                     "until then", self.key, wait, 1 + self.queued)
            core.hold_for_connection([job] + core.drain(), wait, self._clock())
            return False

    def _unreachable(self, job: Job, last: Reply, host: str | None, ip: str | None) -> None:
        now = self._clock()
        core = self.core
        verdict = self._refused(last, now) if last.code is not None else None
        if core.state.mode is Mode.PAUSED:  # a suspend pattern matched the refusal
            core.hold_paused(job, now)
            return None
        if verdict is not True and self.connected > 0 and slow_down(last.code, last.text) == "connections":
            # The receiver is busy, not gone, and never saw the message: the open sessions take it.
            core.put_back(job)
            return None
        self._done(job, last, host, ip, verdict)
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
