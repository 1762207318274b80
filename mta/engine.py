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
import os
import socket

import msgspec

from mta.broker import client
from mta.broker.client import Delivery
from mta.broker.errors import BrokerLost
from mta.ops import control, status

from mta.destinations.budget import Budget
from mta.clock import SYSTEM, Clock
from mta.config import Config, ConfigError, load_config
from mta.destinations.delivery import Destination
from mta.intake.accept import Intake
from mta.intake.window import LaneWindow, OffLoop
from mta.settle.journal import Journal
from mta.intake.message import Job
from mta.ops.metrics import Metrics
from mta.routing.mx import MxAnswer, MxResolver
from mta.routing.routes import RouteTable
from mta.routing.table import Router
from mta.routing.rules import Resolved, Rules
from mta.destinations.share import Shares
from mta.settle.acks import AckBook
from mta.settle.outcomes import Outcomes
from mta.settle.settler import Settler
from mta.dkim.signer import Signer, load_keys
from mta.smtp.client import Connector
from mta.broker.topology import LANES, Topology, lane_queue

log = logging.getLogger("mta.engine")

FORGET_SWEEP = 60.0  # seconds between looks for idle destinations to forget
JOURNAL_BYTES = 2048  # room per outcome in the journal, whose files hold 4 prefetch windows each


def redact(url: str) -> str:
    """A broker URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"


class Engine:
    def __init__(self, config: Config, *, clock: Clock = SYSTEM, config_path: str | None = None):
        self.config = config
        self.config_path = config_path
        self.time = clock  # the one clock: timers, sleeps, monotonic time
        self.clock = clock = clock.wall  # the wall time: results, ages, limits
        self.rules = Rules(config)
        dns = config.dns
        self.resolver = MxResolver(dns.nameservers, dns.port, dns.timeout, dns.min_ttl, dns.max_ttl, clock)
        self.connector = Connector(config.smtp.helo or socket.getfqdn(), config.smtp.bind, self.time, config.smtp.ca_file)
        self.topology = Topology(config.broker.queue_type, config.broker.delivery_limit)
        self.destinations: dict[str, Destination] = {}
        self.budget = Budget.from_config(config.smtp.max_connections)  # SMTP connections of all destinations
        self.shares = Shares(clock)  # each provider's limits over all its destinations
        self.pauses = control.Pauses()
        self.control_gate = control.gate_for(config.control)  # ConfigError when its key is missing
        self.counts = {"consumed": 0, "delivered": 0, "bounced": 0, "deferred": 0, "expired": 0, "invalid": 0,
                       "held": 0}
        self.crashes: dict[str, int] = {}  # bugs that ended a session, by the task they crashed
        self.metrics = Metrics(self, clock=clock)
        # What an attempt, a hold or a failed lookup means for a message; bound once for every destination.
        self.outcomes = Outcomes(clock, self.counts, self.metrics, self.destinations, self.rules, config.default)
        self._done, self._hold = self.outcomes.done, self.outcomes.hold
        self.router = Router(self.resolver, self.rules, self._deliver, self.outcomes.unroutable, clock=clock)
        # Customer smarthosts: reads the routes' passwords now (ConfigError when one is missing).
        self.routes = self.router.routes = self.outcomes.routes = RouteTable(config.routes, self.rules,
                                                                             self.pauses, clock)
        self.off_loop = OffLoop()  # big bodies' decode
        self.intake = Intake(clock, self.counts, config.smtp.max_message_size, self.off_loop, self.router,
                             self.outcomes)
        self.signer = Signer(load_keys(config.dkim)[0], self.router.route, self.outcomes.not_signed,
                             clock=self.time) if config.dkim else None
        self.settler = None
        self.journal: Journal | None = None
        self._recorded: dict = {}  # outcomes read back from the journal, until the settler takes them
        self.ready = asyncio.Event()
        self.stopping = False
        if self.signer is not None:
            self.signer.observe = self.metrics.observe_dkim_signing

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
            self.metrics.serve(self.config.metrics.address, self.config.metrics.port)
        self._open_journal()
        backoff = 1.0
        while not stop.is_set():
            started = self.clock()
            try:
                await self._session(stop)
            except BrokerLost as exc:
                log.warning("broker session at %s ended: %s; reconnecting in %.0fs",
                            redact(self.config.broker.url), exc, backoff)
            if stop.is_set():
                break
            if self.clock() - started > 30:
                backoff = 1.0
            try:
                await asyncio.wait_for(stop.wait(), backoff)
            except asyncio.TimeoutError:
                pass
            backoff = min(backoff * 2, 30.0)
        if self.journal is not None:
            self.journal.close()
        self.metrics.close()

    def _open_journal(self) -> None:
        """Read back the final outcomes a previous process recorded, and record ours."""
        setting = self.config.broker.journal
        if setting == "" or (setting == "auto" and self.config_path is None):
            return
        path = self.config_path + ".outcomes" if setting == "auto" else \
            os.path.join(os.path.dirname(os.path.abspath(self.config_path or ".")), setting)
        window = self.config.broker.prefetch + self.config.broker.single_prefetch
        try:
            self._recorded = Journal.read(path)
            self.journal = Journal(path, max(1 << 20, 4 * window * JOURNAL_BYTES))
        except OSError as exc:
            if setting != "auto":
                raise ConfigError([f"broker.journal: cannot write {path}: {exc}"]) from exc
            log.warning("final outcomes are kept in memory only (%s: %s): after a crash, mail "
                        "delivered just before it may be sent again", path, exc)
            return
        log.info("final outcomes recorded in %s (%d read back)", path, len(self._recorded))

    async def _forget_idle_destinations(self) -> None:
        """Destinations come and go with the mail (10,000 domains a day is common): drop the
        ones with nothing to remember, so memory and a metrics scrape follow the live ones.
        Runs until the session ends."""
        while True:
            await self.time.sleep(FORGET_SWEEP)
            self.forget_idle(self.clock())

    def forget_idle(self, now: float) -> int:
        idle = [key for key, d in self.destinations.items() if d.forgettable(now)]
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
                client.on_consumer_cancel(channel, self._cancelled(lane, lost))
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
                tasks = [group.create_task(_endless("settler", self.settler.run()), name="settler"),
                         group.create_task(_endless("forget idle", self._forget_idle_destinations()),
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
            for crash in _leaves(group):
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

    @staticmethod
    def _cancelled(lane: str, lost: asyncio.Event):
        def on_cancel() -> None:
            log.warning("the broker cancelled the consumer of %s; reconnecting", lane_queue(lane))
            lost.set()

        return on_cancel

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

        async def on_message(message: Delivery) -> None:
            book.received(message.delivery.delivery_tag)
            take(message)

        tag = (await lane_channel.basic_consume(lane_queue(lane), on_message)).consumer_tag
        return lane_channel, tag, book

    async def _on_control(self, message, publish_channel) -> None:
        """One control message (aio-pika's: body, headers, ack)."""
        try:
            await self._obey(message, publish_channel)
        finally:  # whatever became of it: an unacknowledged one would hold the prefetch window
            try:
                await client.acknowledge(message)
            except BrokerLost as exc:  # the channel closed: the queue went with it
                log.debug("acknowledging a control message failed: %s", exc)

    async def _obey(self, message, publish_channel) -> None:
        now = self.clock()
        command = self.control_gate.admit(message.body, message.headers, now)  # refused: counted, None
        if command is None:
            return
        reply_to = self.control_gate.reply_queue(command, now)
        if command["command"] == "status":  # `mta status` asking
            if reply_to:
                await status.answer(self, command, publish_channel, reply_to)
            return
        if command["command"] == "reload":
            ok, error = self.reload(), "the rules file was refused (see the MTA's log)"
        else:
            ok = self._pause_or_resume(command, now)
            error = None if ok else self.pauses.refusal(command, now)
        if reply_to:
            await control.answer(publish_channel, reply_to,
                                 control.acknowledgement(command, self.metrics.instance, ok, None if ok else error))

    def _pause_or_resume(self, command: dict, now: float) -> bool:
        name = self.pauses.apply(command, now)
        if name is None:
            if command["command"] == "pause":
                log.warning("pause %s refused: %s; nothing changed", str(command.get("target", ""))[:100],
                            self.pauses.refusal(command, now))
            return False
        until = command.get("until")
        log.info("%s %s%s", command["command"], name[:100], f" until {until:.0f}" if until else "")
        if command["command"] == "resume":
            destination = self.destinations.get(name)
            if destination is not None:
                destination.resume(now, "operator: mta resume")
            return True
        for destination in self.destinations.values():
            if destination.key == name:
                if until is None or until > now:
                    destination.suspend(now, until, "operator: mta pause")
                continue
            for job in destination.drain():
                if self.pauses.paused(now, job.domain, destination.key):
                    self._hold(job, control.PAUSED_HOLD)
                else:
                    destination.push(job)
        return True

    def reload(self) -> bool:
        """Re-read the rules file (SIGHUP, `mta reload`): new limits and patterns apply to
        live destinations at once, sessions on the wire finish; a bad file changes nothing."""
        if self.config_path is None:
            log.warning("reload asked for, but the rules did not come from a file; nothing changed")
            return False
        try:
            config, rules, keys = self._reread()
        except ConfigError as exc:
            log.error("reload of %s refused, the old rules stay in force: %s", self.config_path,
                      "; ".join(exc.problems))
            return False
        self.config, self.rules = config, rules
        self.outcomes.rules, self.outcomes.default = rules, config.default
        self.router.reload(self.rules)
        self.shares.reload(self.rules)
        if keys is not None:
            if self.signer is None:
                self.signer = Signer(keys, self.router.route, self.outcomes.not_signed)
                self.signer.observe = self.metrics.observe_dkim_signing
            else:
                self.signer.reload(keys)
        self._reapply(self.clock())
        log.info("reloaded %s: %d domain rules, %d providers, %d patterns", self.config_path,
                 len(self.config.domains), len(self.config.providers), len(self.config.patterns))
        return True

    def _reread(self) -> tuple[Config, Rules, list | None]:
        """The rules file read again, its rules, and its DKIM keys if they changed; the routes
        take their new entries. ConfigError, all or nothing, when anything is wrong."""
        config = load_config(self.config_path)
        for section in ("broker", "dns", "smtp", "metrics", "control"):
            if getattr(config, section) != getattr(self.config, section):
                log.warning("reload: section %s changed; it takes effect only after a restart", section)
        config = msgspec.structs.replace(config, broker=self.config.broker, dns=self.config.dns,
                                         smtp=self.config.smtp, metrics=self.config.metrics,
                                         control=self.config.control)
        rules = Rules(config)
        keys = None
        if config.dkim != self.config.dkim:
            keys, _ = load_keys(config.dkim)  # all or nothing, like the rest of the file
        self.routes.reload(config.routes, rules)
        return config, rules, keys

    def _reapply(self, now: float) -> None:
        """The reloaded rules, on every live destination."""
        for destination in self.destinations.values():
            destination.patterns = self.rules.patterns
            if destination.key.startswith("route:"):
                entry = self.routes.entry(destination.key)
                resolved = entry.resolved if entry is not None else None
            else:
                resolved = self.rules.resolve(destination.domain, destination.answer)
            if resolved is not None and resolved.key == destination.key:
                destination.apply(resolved.policy)
            destination.refresh(now)

    def _deliver(self, job: Job, answer: MxAnswer, resolved: Resolved) -> None:
        job.destination = resolved
        if self.pauses and self.pauses.paused(self.clock(), job.domain, resolved.key):
            self._hold(job, control.PAUSED_HOLD)
            return
        destination = self.destinations.get(resolved.key)
        if destination is None:
            destination = Destination(resolved.key, answer, resolved.policy, connector=self._connector_for(resolved.key),
                                      port=self.config.smtp.port, done=self._done, hold=self._hold,
                                      clock=self.time, patterns=self.rules.patterns, budget=self.budget,
                                      smtp=self.config.smtp, share=self.shares.of(resolved),
                                      give_back=self.give_back)
            destination.domain = job.domain  # a domain it serves, to find its rules again on reload
            self.destinations[resolved.key] = destination
        else:
            destination.answer = answer
        destination.push(job)

    def _connector_for(self, key: str):
        """A route's destination connects with the route's credentials and TLS mode."""
        return self.routes.connector(key, self.connector) if key.startswith("route:") else self.connector


class TaskCrashed(Exception):
    """A session's task raised (its error is the cause), or returned though it must run
    until the session ends."""

    def __init__(self, task: str):
        super().__init__(f"{task} ended")
        self.task = task


async def _endless(task: str, work) -> None:
    """Await `work`, which runs until cancelled: anything else ends the session, as a
    TaskCrashed naming the task, except a lost broker, which is no crash."""
    try:
        await work
    except BrokerLost:
        raise
    except Exception as exc:
        raise TaskCrashed(task) from exc
    raise TaskCrashed(task)


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out
