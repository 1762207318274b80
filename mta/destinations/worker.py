"""A destination's connection worker: sockets, timers and sleeps, nothing to decide.

A worker is a task that holds one SMTP session at a time and loops: ask for the next job
(shaper.destination decides which, single first, and books its rate slot), open a session
if it has none, wait for the slot if it is later, and carry the transaction, with the next job's commands pipelined
behind its content when one is ready with its slot due (RFC 2920); hand every outcome to
the destination (`Destination._settle`, which hands it on as a shaper.handoffs.Attempt). It ends when the queue stays empty for
`idle_timeout`, the window shrank under it, the destination paused, or another destination
of its provider waits for its slot; a session is closed after
`max_deliveries_per_connection` messages or when it is no longer usable.

One attempt is bounded: at most `smtp.max_mx_hosts` hosts and `smtp.max_addresses_per_mx`
addresses each, all within `smtp.delivery_deadline` (opening a session ends by the time
left, each of its steps within its own timeout; the transaction is watched by a
`Watchdog`), and a connection that `max_connection_rate` allows only in more than
`MAX_WAIT` seconds is not waited for with the delivery unacknowledged.

A job the worker holds when it ends is never lost: one whose reply to the end of data came
is settled with it, one whose content went out gets "interrupted" (the outcome is unknown),
any other goes back to the broker untried.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from mta.config import Policy
from mta.destinations.watchdog import NEVER, Watchdog, answered, polled
from mta.intake.message import Job
from mta.settle.acks import abandoned
from mta.smtp.client import Reply, SessionFailed, Timeouts
from mta.smtp.session import Session
from shaper.allowance import MAX_WAIT
from shaper.handoffs import Attempt, Held, Wait
from shaper.state import Mode
from shaper.units import Duration

if TYPE_CHECKING:
    from mta.destinations.delivery import Destination

log = logging.getLogger("mta.delivery")

__all__ = ["Worker", "timeouts_of"]


def timeouts_of(policy: Policy) -> Timeouts:
    return Timeouts(
        connect=policy.connect_timeout, ehlo=policy.ehlo_timeout, starttls=policy.starttls_timeout,
        mail_from=policy.mail_from_timeout, rcpt_to=policy.rcpt_to_timeout,
        data=policy.data_timeout, data_dot=policy.data_dot_timeout,
    )


def _commands(session: Session, job: Job) -> tuple[bytes, bytes] | Reply:
    """The job's MAIL FROM and RCPT TO for this session, or the reply refusing it here."""
    sender, sender_utf8 = job.wire_sender()
    return session.commands(sender, job.recipient.text, job.data, utf8=job.recipient.utf8 or sender_utf8,
                            eight_bit=job.eight_bit)


class Worker:
    """One worker of ``dest``; `run` is its task."""

    __slots__ = ("dest", "core", "clock", "watchdog", "session", "sent", "job", "follow", "carried", "sending",
                 "reconnecting", "lease", "_now")

    def __init__(self, dest: Destination) -> None:
        self.dest = dest
        self.core = dest.core
        self.clock = dest._time  # timers, sleeps
        self._now = dest._now  # monotonic time, bound once
        self.watchdog: Watchdog | None = None
        self.session: Session | None = None
        self.sent = 0  # messages the session carried
        self.job: Job | None = None
        self.follow: Job | None = None  # the next job, its commands pipelined behind job's content
        self.carried: Job | None = None  # paced, never begun: its session broke under it
        self.sending: Job | None = None  # its content on the wire: the receiver may have it
        self.reconnecting = False  # this worker had a session before
        self.lease: str | None = None  # its connection's lease across nodes (mta.destinations.gate)

    async def run(self) -> None:
        dest, core, clock = self.dest, self.core, self.clock
        share = dest.share
        self.watchdog = Watchdog(clock)  # of this task
        try:
            while True:
                if self.session is not None and (core.window.excess or core.state.mode is Mode.PAUSED
                                                 or (share is not None and share.yields(dest))):
                    return  # the window shrank, the destination paused or another of the provider
                    # waits with none while this one has several: give the slot back
                step, self.carried = self.carried, None  # paced when it was pipelined, never begun
                if step is None:
                    step = await dest._next(core.policy.idle_timeout if self.session is not None else 0)
                    if step is None:
                        return
                job = self.job = step.job if step.__class__ is Wait else step  # its rate slot booked
                deadline = self._now() + dest._deadline  # the attempt starts: connect + transaction
                if self.session is None and not await self._connect(job, deadline):
                    return
                if step.__class__ is Wait:
                    deadline += await self._pace(step.until)  # the wait for a rate slot is not the attempt's
                    job = self.job = core.single_first(job)  # single mail that came meanwhile takes the slot
                if dest.gate is not None:  # and the rate across nodes
                    shared = await dest.gate.message_wait()
                    if shared > MAX_WAIT:  # the other nodes booked it far ahead: held, not kept waiting
                        self._drop(job)
                        dest._hold(Held(job, int(shared) + 1, "shared rate"))
                        continue
                    deadline += await self._pace(self._now() + shared)
                if core.state.mode is Mode.PAUSED:  # paused while this job waited for its turn
                    core.hold_paused(job, dest._now())
                    self._drop(job)
                    return
                if abandoned(job):  # its channel closed while it waited: the broker has it again
                    self._drop(job)
                    continue
                if not await self._transactions(job, deadline):
                    return
        finally:
            await self._end()

    def _drop(self, job: Job) -> None:
        """``job`` is no longer this worker's: held, put back, or gone from the broker."""
        self.core.lanes.release(job)
        self.job = None

    async def _connect(self, job: Job, deadline: float) -> bool:
        """A session for ``job``; False: none (the job was handed on), the worker ends."""
        dest = self.dest
        share = dest.share
        if self.reconnecting and share is not None and share.wanted_by_other(dest):
            # The provider's sessions take turns: this one reconnects after the one in line.
            self.core.put_back(job)
            self._drop(job)
            share.wait(dest, close_idle=False)
            return False
        self.reconnecting = True
        dest._opening += 1
        try:
            session = await self._open(job, deadline)
        finally:
            dest._opening -= 1
        if session is None:
            self._drop(job)
            return False
        session.on_dot = self.watchdog.dot_read
        self.session, self.sent = session, 0
        return True

    async def _transactions(self, job: Job, deadline: float) -> bool:
        """``job``'s transaction and those pipelined behind it; False: the worker ends."""
        dest, session, watchdog = self.dest, self.session, self.watchdog
        reply = await self._begin(session, job, True, deadline)
        while reply is None:  # the receiver waits for job's content
            # The next job, its commands in one write with job's content (RFC 2920), while not closing.
            follow = self.follow = (self.core.follow(job, self.sent, dest._now())
                                    if session.pipelining and not dest.closing
                                    and (dest.gate is None or dest.gate.message_now()) else None)
            ahead = None if follow is None else _commands(session, follow)
            self.sending = job
            reply, cut = await self._finish(session, job, ahead if isinstance(ahead, tuple) else None, deadline)
            self.job = self.sending = None
            dest._settle(session, job, reply)
            self.sent += 1
            if follow is None:
                break
            job = self.job = follow
            self.follow = None
            deadline = min(watchdog.then, self._now() + dest._deadline)  # from the reply to the dot
            if isinstance(ahead, Reply):  # refused here: nothing went out for it
                reply = ahead
            elif cut is not None:  # its replies, read behind the message's, were cut short
                reply = cut
            elif not session.usable:  # no reply to the dot: the next one was never begun
                self.carried, self.job = job, None
            elif abandoned(job):  # its channel closed meanwhile: the receiver drops it when we hang up
                session.usable = False
                self._drop(job)
                break
            elif self.core.state.mode is Mode.PAUSED:  # by the reply to the message before it
                session.usable = False  # hang up rather than send it: the receiver drops it
                self.core.hold_paused(job, dest._now())
                self._drop(job)
                return False
            else:
                reply = await self._begin(session, job, False, deadline)
        if self.job is not None:  # refused (or failed) before its content
            self.job = None
            dest._settle(session, job, reply)
            self.sent += 1
        if not session.usable or self.sent >= self.core.policy.max_deliveries_per_connection:
            await self._close(session)
            self.session = None
        return True

    async def _end(self) -> None:
        """The worker ends (or is cancelled): settle, report or give back what it holds."""
        dest, watchdog, session = self.dest, self.watchdog, self.session
        watchdog.stop()
        job, sending = self.job, self.sending
        dot = None
        if sending is not None and session is not None:
            dot = answered(watchdog, session)
            if dot is None:  # the reply may be in the socket, not yet read: let the loop read it
                dot = await polled(watchdog, session)
        for left in (job, self.follow, self.carried):
            if left is None:
                continue
            if left is sending and dot is not None:
                dest._settle(session, left, dot)
                continue
            self.core.lanes.release(left)
            if left is sending:  # cancelled after its content went out: the outcome is unknown
                dest._done(Attempt(left, Reply(None, "delivery interrupted (shutdown)", "message"), None, None, None))
            elif dest._give_back is not None:  # cut off before its content went out: no attempt
                dest._give_back(left)
            else:  # the same without an engine to hand it to: the broker redelivers it
                book, tag = left.delivery
                book.requeue.append(tag)
        if session is not None:
            await self._close(session)

    # ---- one transaction

    async def _begin(self, session: Session, job: Job, write: bool, deadline: float) -> Reply | None:
        """MAIL, RCPT and DATA for ``job`` (``write`` False: they went out pipelined, read
        the replies): None when the receiver waits for the content, else the outcome."""
        watchdog = self.watchdog
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
                      deadline: float) -> tuple[Reply, Reply | None]:
        """``job``'s content (and ``ahead``, the next transaction's commands); its outcome,
        and the next transaction's when reading its replies was cut short after the reply
        to ``job``'s end of data (which stays ``job``'s outcome: the receiver may have
        accepted it, and it must not be sent again)."""
        watchdog = self.watchdog
        try:
            watchdog.await_dot(deadline, self.dest._deadline if ahead is not None else None)
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
            dot = answered(watchdog, session)
            if dot is not None:  # the next transaction's deadline
                return dot, self._out_of_time(session, "mail", "before the message was sent")
            return self._out_of_time(session, "message", "waiting for the reply to the message"), None
        except Exception as exc:  # a bug must cost one attempt, not the message
            crashed = self._crashed(session, job, exc)
            return (watchdog.dot, crashed) if watchdog.dot is not None else (crashed, None)

    def _out_of_time(self, session: Session, phase: str, where: str) -> Reply:
        session.usable = False  # a step was cut short: the session's state is unknown
        return Reply(None, f"delivery deadline of {Duration(self.dest._deadline)} reached {where}", phase)

    def _crashed(self, session: Session, job: Job, exc: Exception) -> Reply:
        log.exception("%s: delivery of %s failed unexpectedly; it is retried", self.dest.key, job.id)
        session.usable = False
        return Reply(None, f"internal error: {exc.__class__.__name__}", "message")

    async def _pace(self, until: float) -> float:
        """Wait for the rate slot booked at ``until``; the seconds waited."""
        waited = until - self._now()
        if waited <= 0:
            return 0.0
        await self.clock.sleep(waited)
        return waited

    # ---- sessions

    async def _close(self, session: Session) -> None:
        self.dest.connected -= 1
        try:
            await session.close()
        finally:  # after the receiver saw it closed (the lease counts what it counts), or cancelled
            self._release()

    def _release(self) -> None:
        lease, self.lease = self.lease, None
        if lease is not None:
            self.dest.gate.release(lease)

    async def _open(self, job: Job, deadline: float) -> Session | None:
        """A session to the first host that takes one, in MX order (at most `max_mx_hosts`
        hosts and `max_addresses_per_mx` addresses of each, within the attempt's deadline).
        On failure the job gets the last reply (`Destination._unreachable`: or goes back to
        the queue when the receiver only said "too many connections" to this one while
        others are up; with nobody else connected the destination is dead)."""
        dest = self.dest
        if dest._budget.should_yield(dest.key):
            # Single mail or a destination without any connection waits for a budget slot:
            # this reconnect gives its slot up; the job goes back to the front of the queue.
            self.core.put_back(job)
            return None
        if not await self._connection_slot(job):
            return None
        if dest.gate is not None:  # a lease across nodes: else the others have the connections
            self.lease = await dest.gate.lease()
            if self.lease is None:
                self.core.put_back(job)
                return None
        session = None
        try:
            session = await self._first_host(job, deadline)
        finally:
            if session is None:  # no session (or cancelled on the way): the lease goes back
                self._release()
        return session

    async def _first_host(self, job: Job, deadline: float) -> Session | None:
        dest = self.dest
        last = Reply(None, "no MX host to try", "connect")
        last_host = last_ip = None
        tls = self.core.policy.tls
        for host in dest.answer.hosts[:dest._mx_hosts]:
            for ip in host.addresses[:dest._mx_addresses]:
                left = deadline - self._now()
                if left <= 0:
                    last = Reply(last.code, f"{last.text} (delivery deadline of {Duration(dest._deadline)} "
                                            f"reached before the other MX hosts were tried)", last.phase)
                    return dest._unreachable(job, last, last_host, last_ip)
                try:
                    session = await dest._connector.open(host.name, ip, host.port or dest._port, tls=tls,
                                                         timeouts=self._opening_timeouts(left), tlsa=host.tlsa)
                except SessionFailed as exc:
                    last, last_host, last_ip = exc.reply, host.name, ip
                    dest.last_error = f"{host.name} [{ip}]: {last}"
                    log.debug("%s: %s [%s] failed at %s: %s", dest.key, host.name, ip, last.phase, last)
                    continue
                dest.connected += 1
                self.core.reachable()
                return session
        return dest._unreachable(job, last, last_host, last_ip)

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
        dest, core = self.dest, self.core
        while True:
            wait = core.connection_wait(dest._now())
            if wait is None and dest.gate is not None:  # allowed here: and across nodes (booked)
                wait = await dest.gate.connection_wait()
                if wait <= MAX_WAIT:
                    await self.clock.sleep(max(0.0, wait))
                    return True
            if wait is None:
                return True
            if wait <= MAX_WAIT:
                await self.clock.sleep(wait)
                continue
            if dest.connected > 0:
                core.put_back(job)
                return False
            log.info("%s: next connection allowed by max_connection_rate in %.0fs; %d message(s) held "
                     "until then", dest.key, wait, 1 + dest.queued)
            core.hold_for_connection([job] + core.drain(), wait, dest._now())
            return False
