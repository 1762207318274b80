"""Destinations and their connection workers.

A destination (an MX site, a provider, or a configured domain) owns a ready queue per lane
holding only what it can send soon (shaper.allowance; the rest is held in a delay queue)
and up to `connection_limit` workers. A worker is a task that holds one SMTP session and
loops: take the next job (single lane first), send it, hand the outcome to the engine;
until the queue stays empty for `idle_timeout` or the session has carried
`max_deliveries_per_connection` messages. No task per message: a job is handed from the
queue straight to a waiting worker.

When every host of a destination refuses a connection and no other worker holds a live
session, the destination is unreachable: the queued jobs are failed together with that
reply instead of each one paying the connect timeout again (Postfix's "dead destination").
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from mta.config import Policy
from mta.message import Job
from mta.mx import MxAnswer
from mta.smtp import Connector, Reply, Session, SessionFailed, Timeouts
from shaper.allowance import hold_delay
from shaper.limiter import Gcra

log = logging.getLogger("mta.delivery")

# Outcome callback: (job, reply, MX host name, IP address); the host is None before any was tried
Done = Callable[[Job, Reply, "str | None", "str | None"], None]


def timeouts_of(policy: Policy) -> Timeouts:
    return Timeouts(
        connect=policy.connect_timeout, ehlo=policy.ehlo_timeout, starttls=policy.starttls_timeout,
        mail_from=policy.mail_from_timeout, rcpt_to=policy.rcpt_to_timeout,
        data=policy.data_timeout, data_dot=policy.data_dot_timeout,
    )


def _message_burst(policy: Policy) -> int:
    return max(1, int(policy.max_message_rate.per_second))  # one second's worth back to back


def _connection_burst(policy: Policy) -> int:
    return max(1, policy.connection_limit)  # a cold destination may open all its connections at once


class Destination:
    def __init__(self, key: str, answer: MxAnswer, policy: Policy, *, connector: Connector,
                 port: int, done: Done, hold: Callable[[Job, int], None], clock: Callable[[], float]):
        self.key = key
        self.answer = answer
        self._connector = connector
        self._port = port
        self._done = done
        self._hold = hold
        self._clock = clock
        self.single: deque[Job] = deque()
        self.bulk: deque[Job] = deque()
        self._waiters: deque[asyncio.Future] = deque()
        self.workers = 0
        self.connected = 0
        self.tasks: set[asyncio.Task] = set()
        self.last_error: str | None = None
        self.closing = False
        self.unreachable_since: float | None = None
        self.message_rate = Gcra(policy.max_message_rate, burst=_message_burst(policy))
        self.connection_rate = Gcra(policy.max_connection_rate, burst=_connection_burst(policy))
        self.apply(policy)

    def apply(self, policy: Policy) -> None:
        """New rules (start or reload); running sessions finish under them."""
        self.policy = policy
        self.timeouts = timeouts_of(policy)
        now = self._clock()
        self.message_rate.set_rate(policy.max_message_rate, now, burst=_message_burst(policy))
        self.connection_rate.set_rate(policy.max_connection_rate, now, burst=_connection_burst(policy))

    @property
    def queued(self) -> int:
        return len(self.single) + len(self.bulk)

    def push(self, job: Job) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(job)
                return
        ready = self.single if job.lane == "single" else self.bulk
        delay = hold_delay(len(ready), self.policy.max_message_rate.per_second, self.policy.connection_limit)
        if delay is not None:
            self._hold(job, delay)
            return
        ready.append(job)
        if self.workers < self.policy.connection_limit and self.workers <= self.queued:
            self._spawn()

    def _spawn(self) -> None:
        self.workers += 1
        task = asyncio.get_running_loop().create_task(self._work(), name=f"worker {self.key}")
        self.tasks.add(task)
        task.add_done_callback(self._worker_ended)

    def _worker_ended(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        self.workers -= 1
        if not task.cancelled() and task.exception() is not None:
            log.error("worker for %s crashed: %r; its job is retried", self.key, task.exception())
        if self.queued and self.workers == 0:
            self._spawn()

    def _take(self) -> Job | None:
        if self.single:
            return self.single.popleft()
        if self.bulk:
            return self.bulk.popleft()
        return None

    def close_idle(self) -> None:
        """Shutdown: workers finish the transaction they are in and take no more."""
        self.closing = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def _next(self, timeout: float) -> Job | None:
        job = self._take()
        if job is not None or timeout <= 0 or self.closing:
            return job
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            return None

    def drain(self) -> list[Job]:
        """Everything not yet on the wire (shutdown or lost broker)."""
        jobs = list(self.single) + list(self.bulk)
        self.single.clear()
        self.bulk.clear()
        return jobs

    async def _work(self) -> None:
        session: Session | None = None
        sent = 0
        job: Job | None = None
        try:
            while True:
                job = await self._next(self.policy.idle_timeout if session is not None else 0)
                if job is None:
                    return
                if session is None:
                    session = await self._open(job)
                    if session is None:
                        job = None
                        return
                    sent = 0
                await self._pace()
                try:
                    reply = await session.send(job.sender.text if job.sender else "", job.recipient.text,
                                               job.data, utf8=job.recipient.utf8 or bool(job.sender and job.sender.utf8),
                                               eight_bit=job.eight_bit)
                except SessionFailed as exc:
                    reply = exc.reply
                except Exception as exc:  # a bug must cost one attempt, not the message
                    log.exception("%s: delivery of %s failed unexpectedly; it is retried", self.key, job.id)
                    session.usable = False
                    reply = Reply(None, f"internal error: {exc.__class__.__name__}", "message")
                done, job = job, None
                self._done(done, session.stamp(reply), session.mx, session.ip)
                sent += 1
                if not session.usable or sent >= self.policy.max_deliveries_per_connection:
                    await self._close(session)
                    session = None
        finally:
            if job is not None:  # cancelled mid-transaction: the outcome is unknown
                self._done(job, Reply(None, "delivery interrupted (shutdown)", "message"), None, None)
            if session is not None:
                await self._close(session)

    async def _pace(self) -> None:
        while True:
            decision = self.message_rate.take(self._clock())
            if decision.allowed:
                return
            await asyncio.sleep(decision.retry_after)

    async def _close(self, session: Session) -> None:
        self.connected -= 1
        await session.close()

    async def _open(self, job: Job) -> Session | None:
        """A session to the first host that takes one, in MX order; on failure the job (and,
        when nobody else is connected, the whole queue) gets the last reply."""
        while True:
            decision = self.connection_rate.take(self._clock())
            if decision.allowed:
                break
            await asyncio.sleep(decision.retry_after)
        last = Reply(None, "no MX host to try", "connect")
        last_host = last_ip = None
        tls = self.policy.tls
        for host in self.answer.hosts:
            for ip in host.addresses:
                try:
                    session = await self._connector.open(host.name, ip, host.port or self._port,
                                                         tls=tls, timeouts=self.timeouts)
                except SessionFailed as exc:
                    last, last_host, last_ip = exc.reply, host.name, ip
                    self.last_error = f"{host.name} [{ip}]: {last}"
                    log.debug("%s: %s [%s] failed at %s: %s", self.key, host.name, ip, last.phase, last)
                    continue
                self.connected += 1
                self.unreachable_since = None
                return session
        self._done(job, last, last_host, last_ip)
        failed = 1
        if self.connected == 0:
            for queued in self.drain():
                self._done(queued, last, last_host, last_ip)
                failed += 1
        if self.unreachable_since is None:
            self.unreachable_since = self._clock()
            log.warning("%s: no host accepted a connection (%s); %d message(s) deferred, and the "
                        "destination is retried with the next message", self.key, self.last_error, failed)
        return None
