"""The listeners of a process: their TLS contexts, servers and shared parts (sources,
failure budgets, the publishing connection, counts), started beside the engine by
`mta run` and stopped with it.

Several processes (`mta run --processes N`) all listen on the same addresses
(SO_REUSEPORT): the kernel spreads connections over them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from functools import partial

from mta.broker.topology import Topology
from mta.clock import SYSTEM, Clock
from mta.config import Config, ConfigError, Listener
from mta.inbound.receiver import Receiver
from mta.inbound.server import InboundServer, Reports
from mta.inbound.verp import load_verp
from mta.submission.lockout import Lockout
from mta.submission.policy import Policy
from mta.submission.publisher import Submitter
from mta.submission.server import Submission
from mta.submission.sources import Directory
from mta.submission.stats import UNKNOWN, Stats

log = logging.getLogger("mta.submission")
# aiosmtpd logs every command line at INFO (a dozen lines per message), and at WARNING what
# any client can repeat at will, with its argument ("unrecognised: <LINE>", which may be a
# password pipelined behind a refused AUTH). Ours say what matters, rate-limited.
logging.getLogger("mail.log").setLevel(logging.ERROR)

# Per connection: a client may say these only so often (aiosmtpd's command_call_limit: 421
# and closed beyond); MAIL, RCPT and DATA are not limited, a connection carries any number.
CALL_LIMITS = {"*": 10 ** 9, "EHLO": 10, "HELO": 10, "NOOP": 100, "HELP": 10, "VRFY": 10, "EXPN": 10,
               "STARTTLS": 2, "AUTH": 10}
COMMAND_TIMEOUT = 300.0  # seconds a client may stay silent (RFC 5321 §4.5.3.2.7 for the server)
PROXY_TIMEOUT = 10.0  # seconds for the PROXY header


def tls_context(listener: Listener) -> ssl.SSLContext | None:
    """The server context of a listener (None: no TLS); ConfigError if its files do not load."""
    if listener.tls == "none":
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(listener.cert_file, listener.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([f"listeners {listener.address}: cannot load cert_file/key_file: {exc}"]) from None
    return context


class Listeners:
    def __init__(self, config: Config, *, clock: Clock = SYSTEM, config_path: str | None = None, store=None,
                 suppression=None):
        self.config = config
        self.listeners = config.listeners
        self.contexts = [tls_context(listener) for listener in config.listeners]
        self.directory = Directory(config.sources, config_path)
        now = clock.now_reader()
        self.stats = Stats(clock.wall, [s.name for s in config.sources])
        self.lockout = Lockout(now)
        topology = Topology(config.broker.queue_type, config.broker.delivery_limit)
        self.submitter = Submitter(config.broker.url, topology, config.broker.publish_timeout, now, store)
        self.hostname = config.smtp.helo or socket.getfqdn()
        self.size = max([s.max_message_size or config.smtp.max_message_size for s in config.sources]
                        or [config.smtp.max_message_size])
        self.clock, self._now = clock, now
        self.receiver = Receiver(load_verp(config.envelope_verp), self.submitter, suppression, clock.wall)  # SPEC §8
        self.reports = [Reports(inbound, self.receiver) for inbound in config.inbound]
        self.servers: list[asyncio.AbstractServer] = []
        self._stop = asyncio.Event()
        self._publishing: asyncio.Task | None = None

    async def start(self) -> None:
        """Listen on every address (OSError when one cannot be bound) and connect to the broker."""
        self._publishing = asyncio.ensure_future(self.submitter.run(self._stop))
        loop = asyncio.get_running_loop()
        for listener, context in zip(self.listeners, self.contexts):
            policy = Policy(listener, self.directory, self.lockout, self.submitter, self.stats,
                            hostname=self.hostname, clock=self.clock, default_size=self.size)
            factory = partial(self._protocol, listener, context, policy)
            try:
                server = await loop.create_server(factory, listener.host, listener.port, reuse_port=True,
                                                  ssl=context if listener.tls == "implicit" else None)
            except OSError as exc:
                raise ConfigError([f"listeners {listener.address}: cannot listen: {exc.strerror or exc}"]) from None
            self.servers.append(server)
            log.info("listening for submissions on %s (tls: %s)", listener.address, listener.tls)
        for reports in self.reports:
            inbound = reports.listener
            factory = partial(InboundServer, reports, data_size_limit=inbound.max_message_size, enable_SMTPUTF8=True,
                              hostname=self.hostname, ident="mta", timeout=COMMAND_TIMEOUT,
                              command_call_limit=CALL_LIMITS)
            try:
                server = await loop.create_server(factory, inbound.host, inbound.port, reuse_port=True)
            except OSError as exc:
                raise ConfigError([f"inbound {inbound.address}: cannot listen: {exc.strerror or exc}"]) from None
            self.servers.append(server)
            log.info("listening for bounces and reports on %s (%s)", inbound.address, ", ".join(inbound.domains))

    def _protocol(self, listener: Listener, context, policy: Policy) -> Submission:
        protocol = Submission(policy, data_size_limit=self.size, enable_SMTPUTF8=True, hostname=self.hostname,
                              ident="mta", tls_context=context if listener.tls == "starttls" else None,
                              timeout=COMMAND_TIMEOUT, auth_require_tls=True, command_call_limit=CALL_LIMITS,
                              proxy_protocol_timeout=PROXY_TIMEOUT if listener.proxy_protocol else None)
        protocol.implicit_tls = listener.tls == "implicit"
        return protocol

    async def stop_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        await self.stop()

    async def stop(self) -> None:
        """Stop listening; submissions waiting for the broker get its answer (up to the
        publish timeout), then the publishing connection closes."""
        for server in self.servers:
            server.close()
        deadline = self._now() + self.config.broker.publish_timeout
        while self.submitter.busy and self._now() < deadline:
            await self.clock.sleep(0.05)
        self._stop.set()
        if self._publishing is not None:
            await self._publishing

    def status(self) -> dict:
        """What `mta status` shows: listeners, and each source's last minute and totals."""
        minute = self.stats.last_minute()
        return {
            "listeners": [{"address": l.address, "tls": l.tls, "proxy_protocol": l.proxy_protocol,
                           "connections": self.stats.connections.get(l.address, 0)} for l in self.listeners],
            "broker": self.submitter.unavailable() or "up",
            "sources": [{"source": name, "auth": known.source.auth, "lane": known.source.lane,
                         "accepted": self.stats.accepted.get(name, 0),
                         "last_minute": minute.get(name, {})} for name, known in self.directory.sources.items()],
            "unknown": minute.get(UNKNOWN, {}),  # refusals and failed logins before any source was known
            "inbound": [{"address": r.listener.address, "domains": list(r.listener.domains),
                         "connections": r.connections, "refused": dict(r.refused)} for r in self.reports],
            "reports": dict(self.receiver.counts),
            "reports_suppressed": dict(self.receiver.suppressed),
        }
