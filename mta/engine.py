"""The engine: consume both lanes, route, deliver, settle; reconnect when the broker goes away.

One broker session = a consuming connection (one channel and prefetch per lane, so a full
bulk window never blocks single mail) and a separate publishing connection with confirms
(a publisher blocked by broker flow control must not block acknowledgements). When either
connection or a consuming channel closes, the session ends: jobs not yet on the wire are
dropped from memory (the broker redelivers them, their channel being gone; a worker holding
one does not send it), transactions on the wire finish without publishing a retry or held
copy, and a new session starts with backoff. Destinations, DNS cache and the record of
recent final outcomes survive sessions: a transaction that ends delivered after its channel
closed is remembered there, and settles its redelivered copy without a second send.

A session's tasks (the settler, the sweep for idle destinations, the waits for SIGTERM and
for a lost broker) run under one `asyncio.TaskGroup`: whichever of them crashes ends the
session the same way a lost broker does, and is logged with its traceback and counted
(`mta_task_crashes_total`); then a new session starts. Without the settler nothing would be
published or acknowledged while SMTP went on, so a settler that stopped must never go
unnoticed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING

from mta.broker import client
from mta.broker.client import Delivery, redact
from mta.broker.errors import BrokerLost
from mta.ops import commands, control, kept, reload as reloading
from mta.destinations.budget import Budget
from mta.submission import listening
from mta.clock import SYSTEM, Clock
from mta.config import Config
from mta.destinations.delivery import Destination
from mta.inbound.verp import load_verp
from mta.intake.accept import Intake
from mta.intake.window import LaneWindow, OffLoop
from mta.settle.journal import Journal, open_journal
from mta.intake.message import Job
from mta.console import for_engine as console_for  # SPEC §9: /console beside /metrics
from mta.ops.metrics import Metrics
from mta.routing.mx import MxAnswer, MxResolver
from mta.routing.routes import RouteTable
from mta.routing.table import Router
from mta.routing.rules import Resolved, Rules
from mta.destinations.share import Shares
from mta.settle.acks import AckBook
from mta.settle.outcomes import Outcomes
from mta.settle.settler import Settler
from mta.supervision import TaskCrashed, cancelled, endless, leaves
from mta.suppression.service import Suppression
from mta.smtp.connector import Connector
from mta.tls.apply import base_key
from mta.tls.service import make_policies
from mta.broker.topology import LANES, Topology, lane_queue
from shaper.handoffs import Held
if TYPE_CHECKING:  # imported when configured: DKIM's cryptography, the cluster's redis-py (a start's CPU)
    from mta.dkim.signer import Signer

log = logging.getLogger("mta.engine")

FORGET_SWEEP = 60.0  # seconds between looks for idle destinations to forget


class Engine:
    def __init__(self, config: Config, *, clock: Clock = SYSTEM, config_path: str | None = None,
                 nodes_at_least: int = 1):
        self.config = config
        self.config_path = config_path
        self.time = clock_ = clock  # the one clock: timers, sleeps, monotonic time for limits and caches
        now = clock.now  # monotonic: limits, timers, cache lifetimes (setting the system clock moves none)
        self.clock = clock = clock.wall  # the wall time: results, ages, what people read
        self.rules = Rules(config)
        self.suppression = Suppression(config.suppression, config_path, clock_)  # SPEC §8
        dns = config.dns
        self.resolver = MxResolver(dns.nameservers, dns.port, dns.timeout, dns.min_ttl, dns.max_ttl, now)
        self.connector = Connector(config.smtp.helo or socket.getfqdn(), config.smtp.bind, self.time, config.smtp.ca_file)
        self.topology = Topology(config.broker.queue_type, config.broker.delivery_limit)
        self.destinations: dict[str, Destination] = {}
        self.budget = Budget.from_config(config.smtp.max_connections, listening(config))  # SMTP connections of all destinations
        self.shares = Shares(now)  # each provider's limits over all its destinations
        self.pauses = control.Pauses()
        self.control_gate = control.gate_for(config.control)  # ConfigError when its key is missing
        self.counts = {"consumed": 0, "delivered": 0, "bounced": 0, "deferred": 0, "expired": 0, "invalid": 0,
                       "held": 0}
        self.crashes: dict[str, int] = {}  # bugs that ended a session, by the task they crashed
        self.metrics = Metrics(self, clock=clock)
        # What an attempt, a hold or a failed lookup means (bound once for every destination), TLS policies:
        self.outcomes = Outcomes(clock, self.counts, self.metrics, self.destinations, self.rules, config.default,
                                 tls=make_policies(config, clock_, config_path))
        self._done, self._hold = self.outcomes.done, self.outcomes.hold
        self.router = Router(self.resolver, self.rules, self._deliver, self.outcomes.unroutable, clock=now, tls=self.outcomes.tls)
        # Customer smarthosts: reads the routes' passwords now (ConfigError when one is missing).
        self.routes = self.router.routes = self.outcomes.routes = RouteTable(config.routes, self.rules,
                                                                             self.pauses, clock)
        self.off_loop = OffLoop()  # big bodies' decode
        self.intake = Intake(clock, self.counts, config.smtp.max_message_size, self.off_loop, self.router,
                             self.outcomes, verp=load_verp(config.envelope_verp))
        self.signer = None
        if config.dkim:  # (imported only then, as the cluster below: a start's CPU)
            from mta.dkim.signer import Signer, load_keys
            self.signer = Signer(load_keys(config.dkim)[0], self.router.route, self.outcomes.not_signed, clock=self.time)
            self.signer.observe = self.metrics.observe_dkim_signing
        self.journal: Journal | None = None
        self.settler, self._recorded = None, {}  # recorded: outcomes read back from the journal, for the settler
        # Several nodes (SPEC §6): limits, state and the record of outcomes shared in a store.
        self.cluster = self.member = None
        if config.cluster.store:
            from mta.cluster.member import Cluster, Member
            self.cluster = Cluster(config.cluster.store, config.cluster.node, clock=clock_, at_least=nodes_at_least,
                                   remember=None if config_path is None else config_path + ".nodes")
            self.member = Member(self, self.cluster)
            self.cluster.nodes.describe, self.intake.recall = self.member.describe, self.member.recall
        self.kept = kept.KeptPauses(self, kept.pause_file(config_path), self.cluster and self.cluster.store)
        self.ready, self.listeners, self.tracking, self.stopping = asyncio.Event(), None, None, False  # `mta run`: §7, §9

    # The intake and the outcomes hold the settler, the signer and the shutdown flag
    # themselves (read once per message); these keep them in step with the engine's.

    @property
    def settler(self) -> Settler | None:
        return self._settler

    @settler.setter
    def settler(self, settler: Settler | None) -> None:
        self._settler = self.intake.settler = self.outcomes.settler = settler

    @property
    def signer(self) -> Signer | None:
        return self._signer

    @signer.setter
    def signer(self, signer: Signer | None) -> None:
        self._signer = self.intake.signer = signer

    @property
    def stopping(self) -> bool:
        return self.intake.stopping

    @stopping.setter
    def stopping(self, stopping: bool) -> None:
        self.intake.stopping = stopping

    # ---- broker sessions

    async def run(self, stop: asyncio.Event) -> None:
        if self.config.metrics.port:
            self.metrics.serve(self.config.metrics.address, self.config.metrics.port, console=console_for(self))
        window = self.config.broker.prefetch + self.config.broker.single_prefetch
        self.journal, self._recorded = open_journal(self.config.broker.journal, self.config_path, window)
        self.intake.suppression = self.outcomes.suppression = self.suppression
        await self.suppression.start()  # before the first message: none may slip past the list
        following = asyncio.ensure_future(self.suppression.follow())
        if self.member is None:
            await self.kept.restore()
            await self._sessions(stop)
        else:
            await self.member.run(lambda: self._sessions(stop))
        following.cancel()
        await self.suppression.stop()
        if self.journal is not None:
            self.journal.close()
        self.metrics.close()

    async def _sessions(self, stop: asyncio.Event) -> None:
        backoff = 1.0
        while not stop.is_set():
            started = self.time.now()
            try:
                await self._session(stop)
            except BrokerLost as exc:
                log.warning("broker session at %s ended: %s; reconnecting in %.0fs",
                            redact(self.config.broker.url), exc, backoff)
            if stop.is_set():
                break
            if self.time.now() - started > 30:
                backoff = 1.0
            try:
                await asyncio.wait_for(stop.wait(), backoff)
            except asyncio.TimeoutError:
                pass
            backoff = min(backoff * 2, 30.0)

    async def _forget_idle_destinations(self) -> None:
        """Destinations come and go with the mail (10,000 domains a day is common): drop the
        ones with nothing to remember, so memory and a metrics scrape follow the live ones.
        Runs until the session ends."""
        while True:
            await self.time.sleep(FORGET_SWEEP)
            self.forget_idle()

    def forget_idle(self) -> int:
        idle = [key for key, d in self.destinations.items() if d.forgettable()]
        for key in idle:
            del self.destinations[key]
        if idle:
            log.debug("forgot %d idle destination(s); %d remain", len(idle), len(self.destinations))
        return len(idle)

    async def _session(self, stop: asyncio.Event) -> None:
        url = self.config.broker.url
        consume_conn = await client.connect(url, "mta consume")
        publish_conn = None
        try:
            publish_conn = await client.connect(url, "mta publish")
            publish_ch = await client.channel(publish_conn, confirms=True)
            await self.topology.declare(publish_ch)
            if self.settler is None:
                self.settler = Settler(publish_ch, self.topology, self.config.broker.publish_timeout,
                                       self.metrics.observe_publish_confirm, counts=self.counts, clock=self.time)
                window = self.config.broker.prefetch + self.config.broker.single_prefetch
                self.settler.recent_limit = max(self.settler.recent_limit, 20 * window)
                self.settler.journal = self.journal
                self.settler.before_ack = self.cluster.record.flush if self.cluster is not None else None
                self.settler.restore(self._recorded)
                self._recorded = {}
            else:
                self.settler.attach(publish_ch)
            lost = asyncio.Event()
            consumers = []
            books: list[AckBook] = []
            for thing in (consume_conn, publish_conn, publish_ch):
                client.on_close(thing, lost.set)
            for lane in LANES:
                channel = await client.channel(consume_conn)
                client.on_close(channel, lost.set)
                # The broker cancels a consumer when its queue is deleted or fails over:
                # without a consumer the process would idle forever, so start a new session.
                client.on_consumer_cancel(channel, cancelled(lane_queue(lane), lost))
                cancel, tag, book = await self._consume(channel, lane)
                consumers.append((cancel, tag))
                books.append(book)
            control_ch = await client.channel(consume_conn)
            client.on_close(control_ch, lost.set)
            # Answers go out on the publishing connection: flow control blocks that one, and
            # the consuming connection must keep acknowledging. The control queue has a
            # prefetch window and a bounded length: a flood on the exchange cannot pile up
            # handlers or messages in this process.
            answers = client.publishing(publish_ch)
            await client.consume_control(control_ch, control.CONTROL, control.CONTROL_PREFETCH,
                                         control.CONTROL_QUEUE_MAX, lambda message: self._on_control(message, answers))
            log.info("consuming %s at %s", ", ".join(lane_queue(l) for l in LANES), redact(url))
            self.ready.set()
            await self._supervised(stop, lost, consumers, books, publish_ch)
        finally:
            self.ready.clear()
            for conn in (publish_conn, consume_conn):
                await client.close(conn)  # a broken one: nothing left to save

    async def _supervised(self, stop: asyncio.Event, lost: asyncio.Event, consumers, books: list[AckBook],
                          publish_ch) -> None:
        """Run the session's tasks until SIGTERM (drain, settle, return), a lost broker or a
        crash of any of them (the session ends; the broker redelivers what it held)."""
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(endless("settler", self.settler.run()), name="settler"),
                         group.create_task(endless("forget idle", self._forget_idle_destinations()),
                                           name="forget idle")]
                stopped = group.create_task(stop.wait(), name="stop")
                broken = group.create_task(lost.wait(), name="broker lost")
                await asyncio.wait([stopped, broken], return_when=asyncio.FIRST_COMPLETED)
                if stop.is_set() and not lost.is_set():
                    await self._shutdown(consumers, books)
                else:
                    log.warning("lost the broker; mail not yet on the wire will be redelivered")
                    self._forget_queued()
                    await self._settled_so_far(publish_ch)
                for task in (*tasks, stopped, broken):
                    task.cancel()
        except* BrokerLost as group:
            log.warning("lost the broker (%s); mail not yet on the wire will be redelivered", group.exceptions[0])
            self._forget_queued()
        except* Exception as group:  # bugs: seen, counted, and the session ends
            for crash in leaves(group):
                self._crashed(crash)
            self._forget_queued()

    def _crashed(self, crash: BaseException) -> None:
        task = crash.task if isinstance(crash, TaskCrashed) else "session"
        self.crashes[task] = self.crashes.get(task, 0) + 1
        error = crash.__cause__ if isinstance(crash, TaskCrashed) and crash.__cause__ is not None else crash
        log.error("%s crashed (%s: %s); ending the broker session: what it held comes back from the broker, "
                  "and a new session starts", task, type(error).__name__, error,
                  exc_info=(type(error), error, error.__traceback__))

    async def _shutdown(self, consumers, books: list[AckBook]) -> None:
        """SIGTERM: stop consuming, give back what is queued, let the wire finish, settle, ack."""
        self.stopping = True
        for lane, tag in consumers:
            try:
                await lane.cancel(tag)
            except BrokerLost as exc:
                log.warning("cancelling consumer %s failed: %s", tag, exc)
        for job in self._forget_queued():
            self.give_back(job)
        workers = [t for d in self.destinations.values() for t in d.tasks]
        for d in self.destinations.values():
            d.close_idle()
        if workers:
            done, pending = await asyncio.wait(workers, timeout=self.config.smtp.shutdown_grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=10)
        # What reached a destination meanwhile (deliveries already on their way when the
        # consumers were cancelled, DNS answers and signatures that came in) goes back too.
        for job in self._forget_queued():
            self.give_back(job)
        self.settler.kick()
        try:
            await asyncio.wait_for(self.settler.wait_idle(), self.config.broker.publish_timeout + 5)
        except asyncio.TimeoutError:
            log.warning("stopping: the broker did not confirm the last results in time; what is not "
                        "acknowledged will be redelivered")
            return
        for book in books:  # every lane's, also one whose deliveries were all given back
            await book.flush()
        log.info("stopped: in-flight mail settled, queued mail returned to the broker")

    def give_back(self, job: Job) -> None:
        """Shutdown: a job that never reached the wire goes back to the broker as it came
        (requeued with the acknowledgements), no attempt counted, no result."""
        book, tag = job.delivery
        book.requeue.append(tag)

    async def _settled_so_far(self, publish_ch) -> None:
        """The consuming side is gone but publishing may still work: let the batch on its way
        get its confirms, so the results it carried are known to be out and a redelivered
        copy is acknowledged without publishing its result a second time."""
        if publish_ch.is_closed:
            return
        try:
            await asyncio.wait_for(self.settler.wait_idle(), self.config.broker.publish_timeout)
        except asyncio.TimeoutError:
            pass

    def _forget_queued(self) -> list[Job]:
        jobs = self.router.drain()
        if self.signer is not None:
            jobs.extend(self.signer.drain())
        for destination in self.destinations.values():
            jobs.extend(destination.drain())
        return jobs

    async def _consume(self, channel, lane: str) -> tuple:
        """Start consuming a lane; (what to cancel at shutdown, consumer tag, its AckBook)."""
        prefetch = self.config.broker.single_prefetch if lane == "single" else self.config.broker.prefetch
        limit = self.config.broker.prefetch_bytes
        lane_channel = client.Consuming.of(channel)  # below aio-pika's messages (mta.broker.client)
        if limit:  # held to prefetch_bytes as well as to the count (mta.intake.window)
            window = LaneWindow(lane_channel, lane_queue(lane), prefetch, limit, None)
            window.take = self.intake.taker(lane, window.book)
            await window.start()
            return window, None, window.book
        await lane_channel.basic_qos(prefetch_count=prefetch)
        book = AckBook(lane_channel)
        take = self.intake.taker(lane, book)

        def on_message(message: Delivery) -> None:
            book.received(message.delivery.delivery_tag)
            take(message)

        tag = (await lane_channel.basic_consume(lane_queue(lane), on_message)).consumer_tag
        return lane_channel, tag, book

    async def _on_control(self, message, publish_channel) -> None:
        await commands.on_control(self, message, publish_channel)

    def reload(self) -> bool:
        """Re-read the rules file (SIGHUP, `mta reload`, mta.ops.reload)."""
        return reloading.reload(self)

    def _deliver(self, job: Job, answer: MxAnswer, resolved: Resolved) -> None:
        job.destination = resolved
        if self.pauses and self.pauses.paused(self.clock(), job.domain, resolved.key, base_key(resolved.key)):
            self._hold(Held(job, control.PAUSED_HOLD, "paused"))
            return
        destination = self.destinations.get(resolved.key)
        if destination is None:
            destination = Destination(resolved.key, answer, resolved.policy, connector=self._connector_for(resolved.key),
                                      port=self.config.smtp.port, done=self._done, hold=self._hold,
                                      clock=self.time, patterns=self.rules.patterns, budget=self.budget,
                                      smtp=self.config.smtp, share=self.shares.of(resolved),
                                      give_back=self.give_back, cluster=self.cluster)
            destination.domain = job.domain  # a domain it serves, to find its rules again on reload
            self.destinations[resolved.key] = destination
            if self.member is not None:
                self.member.created(destination)
        else:
            destination.answer = answer
        destination.push(job)

    def keep_pause(self, target: str, until: float | None, paused: bool) -> None:
        self.kept.keep(target, until, paused)

    def _connector_for(self, key: str):
        """A route's destination connects with the route's credentials and TLS mode."""
        return self.routes.connector(key, self.connector) if key.startswith("route:") else self.connector
