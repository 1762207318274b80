"""What a listener allows (SPEC §7), as aiosmtpd handler hooks: never an open relay.

MAIL is refused (530 5.7.0) until a source is known, by its login or, for `auth: none`,
by the client's address; a login from outside the source's `allow_ips` fails like a wrong
password (535 5.7.8). The source's limits are applied where a receiver would: its rate at
MAIL (451 4.7.1), its size at MAIL's SIZE and in DATA (552 5.3.4), its recipients at RCPT
(452 4.5.3), its sender domains at MAIL and on every From: address (553/550 5.7.1), bare
CR or LF in DATA refused (550 5.6.0) or made CRLF. Then the message is handed to the
broker (mta.submission.publisher) and 250 names its id.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re

from aiosmtpd.proxy_protocol import V2_CMD

from mta.intake.address import InvalidMessage, parse_address
from mta.submission.headers import from_domains
from mta.submission import MAX_CONNECTIONS, message
from mta.submission.sources import client_address

log = logging.getLogger("mta.submission")

_BARE = re.compile(rb"\r\n|\r|\n")
MAX_PER_ADDRESS = 50  # from one client address at once (Postfix: smtpd_client_connection_count_limit)
MAX_IDLE = 10  # RSETs and refused MAILs before a source is known; then the connection ends


def lockout_key(client: str | None) -> str:
    """What failed logins are counted by: the address, or its /64 for IPv6 (one host has a
    whole /64 to choose from)."""
    address = client_address(client or "")
    if address is None or address.version == 4:
        return client or ""
    return str(ipaddress.ip_network(f"{address}/64", strict=False))


class Policy:
    """The hooks of one listener; the sources, failure budgets, publisher and counts are
    shared by all listeners of the process."""

    def __init__(self, listener, directory, lockout, submitter, stats, *, hostname: str, clock, default_size: int):
        self.listener = listener.address
        self.proxy_from = tuple(ipaddress.ip_network(n) for n in listener.proxy_from)
        self.directory = directory
        self.lockout = lockout
        self.submitter = submitter
        self.stats = stats
        self.hostname = hostname
        self.clock = clock  # mta.clock.Clock: the delays after failed logins
        self._wall = clock.wall
        self._now = clock.now_reader()
        self.default_size = default_size
        self._logged: dict[str, float] = {}  # when an address's locked-out logins were last logged
        self.open = 0  # connections now
        self.per_address: dict[str, int] = {}

    # ---- connection

    def connected(self, session) -> str | None:
        """Count a new connection; the answer instead of a greeting when it is one too many."""
        peer = session.peer
        session.client = peer[0] if isinstance(peer, tuple) else str(peer)
        self.stats.connections[self.listener] = self.stats.connections.get(self.listener, 0) + 1
        if self.open >= MAX_CONNECTIONS:
            self.stats.refuse(None, "connections")
            return "421 4.7.0 Too many connections; try again later"
        here = self.per_address.get(session.client, 0)
        if not self.proxy_from and here >= MAX_PER_ADDRESS:  # behind a balancer every peer is the balancer
            self.stats.refuse(None, "connections")
            return "421 4.7.0 Too many connections from your address; try again later"
        self.open += 1
        self.per_address[session.client] = here + 1
        return None

    def disconnected(self, session) -> None:
        self.open -= 1
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        left = self.per_address.get(peer, 1) - 1
        if left > 0:
            self.per_address[peer] = left
        else:
            self.per_address.pop(peer, None)

    def known(self, session) -> bool:
        """Is a source known for this client (logged in, or an `auth: none` address)?"""
        if session is None or session.client is None:
            return False
        return session.source is not None or self.directory.by_address(client_address(session.client)) is not None

    def _idle(self, server, session, reply: str) -> str:
        """A command that did nothing, from a client no source is known for: after
        MAX_IDLE of them the connection ends (it could otherwise be held open forever)."""
        if self.known(session):
            return reply
        session.idle += 1
        if session.idle <= MAX_IDLE:
            return reply
        asyncio.get_running_loop().call_soon(server.transport.close)  # after the answer is written
        return "421 4.7.0 Too many commands without logging in; closing the connection"

    async def handle_RSET(self, server, session, envelope) -> str:
        return self._idle(server, session, "250 2.0.0 OK")

    async def handle_exception(self, error: Exception) -> str:
        """A command that failed unforeseen: one line in the log (not a traceback per
        command a client can repeat), and an answer."""
        if self._log_once(f"exception {type(error).__name__}"):
            log.warning("a submission command failed: %s: %s (said once a minute)", type(error).__name__, error)
        return "500 5.5.0 Error: the command could not be processed"

    async def handle_PROXY(self, server, session, envelope, proxy) -> bool:
        """A PROXY header is believed only from the configured load balancers."""
        peer = client_address(session.client or "")
        if peer is None or not any(peer.version == n.version and peer in n for n in self.proxy_from):
            log.warning("listener %s: PROXY header from %s, which is not in proxy_from: closed",
                        self.listener, session.client)
            return False
        if not proxy.valid or proxy.src_addr is None or proxy.command == V2_CMD.LOCAL:
            return False  # LOCAL: the balancer's own connection (a health check), no client behind it
        session.client = str(proxy.src_addr)
        return True

    async def handle_EHLO(self, server, session, envelope, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        return responses[:-1] + ["250-PIPELINING", responses[-1]]

    # ---- AUTH

    async def login(self, session, username: str, password: bytes):
        """(the reply to a failed login or None, the source or None, whether to close now)."""
        client = lockout_key(session.client)
        named = self.directory.source_of(username)
        name = None if named is None else named.name
        refused = self.lockout.refused(client, username)
        if refused is not None:
            self.stats.auth_failed(name)
            self.stats.refuse(name, "auth_locked")
            if self._log_once(client):  # a flood of refusals is one line a minute per address
                log.warning("AUTH refused for user %r from %s: too many failed logins (%s); said once a minute",
                            username, client, refused)
            return "421 4.7.0 Too many failed logins; try again later", None, True
        self.lockout.failed(client, username)  # until the check says otherwise
        known = await self.directory.check(username, password)
        if known is not None and known.allows(client_address(session.client)):
            self.lockout.passed(client, username)
            log.info("AUTH user %r of source %s from %s", username, known.name, client)
            return None, known, False
        why = "wrong password or unknown user" if known is None else "address not in the source's allow_ips"
        self.stats.auth_failed(name)
        self.stats.refuse(name, "auth")
        log.warning("AUTH failed for user %r from %s: %s", username, client, why)
        return "535 5.7.8 Authentication credentials invalid", None, False

    def _log_once(self, client: str) -> bool:
        now = self._now()
        last = self._logged.get(client)
        if last is not None and now - last < 60:
            return False
        if len(self._logged) >= 10_000:
            self._logged.clear()
        self._logged[client] = now
        return True

    # ---- the transaction

    async def handle_MAIL(self, server, session, envelope, address: str, options: list[str]) -> str:
        source = session.source or self.directory.by_address(client_address(session.client or ""))
        if source is None:
            self.stats.refuse(None, "no_source")
            return self._idle(server, session, "530 5.7.0 Authentication required")
        policy = source.source
        try:
            sender = parse_address(address, "sender")
            address.encode("utf-8")
        except (InvalidMessage, UnicodeEncodeError) as exc:
            self.stats.refuse(source.name, "address")
            return f"553 5.1.7 {exc}"
        if policy.sender_domains is not None and not allowed(sender.ascii_domain, policy.sender_domains):
            self.stats.refuse(source.name, "sender")
            return f"553 5.7.1 Sender domain {sender.ascii_domain} is not allowed for this source"
        size = next((o[5:] for o in options if o.startswith("SIZE=")), None)
        if size is not None and size.isdigit() and int(size) > (policy.max_message_size or self.default_size):
            self.stats.refuse(source.name, "size")
            return "552 5.3.4 Message too big for this source"
        if source.rate is not None and not source.rate.take(self._now()).allowed:
            self.stats.refuse(source.name, "rate")
            return f"451 4.7.1 Message rate of this source exceeded ({policy.max_message_rate}); try again later"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.source = source
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address: str, options: list[str]) -> str:
        source = envelope.source
        if len(envelope.rcpt_tos) >= source.source.max_recipients:
            self.stats.refuse(source.name, "recipients")
            return f"452 4.5.3 Too many recipients (this source may send to {source.source.max_recipients} at once)"
        try:
            parse_address(address, "recipient")
            address.encode("utf-8")
        except (InvalidMessage, UnicodeEncodeError) as exc:
            self.stats.refuse(source.name, "address")
            return f"553 5.1.3 {exc}"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    def size_limit(self, envelope) -> int:
        return envelope.source.source.max_message_size or self.default_size

    def refused(self, source, reason: str) -> None:
        self.stats.refuse(None if source is None else source.name, reason)

    async def data(self, session, envelope) -> str:
        source = envelope.source
        content: bytes = envelope.content
        crlf = content.count(b"\r\n")
        if content.count(b"\n") != crlf or content.count(b"\r") != crlf:
            if source.source.line_endings == "reject":
                self.stats.refuse(source.name, "line_endings")
                return "550 5.6.0 Bare CR or LF in the message: lines must end with CRLF"
            content = _BARE.sub(b"\r\n", content)
        domains = source.source.sender_domains
        if domains is not None:
            written = from_domains(content)
            if not written or not all(allowed(d, domains) for d in written):
                self.stats.refuse(source.name, "sender")
                return "550 5.7.1 From: must name an address of a domain this source may send for"
        recipients = list(envelope.rcpt_tos)
        sid = message.submission_id(source.name, envelope.mail_from, recipients, content)
        protocol = "ESMTP" + ("S" if session.ssl is not None else "") + ("A" if session.source is not None else "")
        helo, now = session.host_name or "unknown", self._wall()

        def build(used: str, indexes: list[int]):
            trace = message.received(helo, session.client, self.hostname, protocol, used, source.name, recipients, now)
            return message.publishes(used, source.source, envelope.mail_from, recipients, content, trace, indexes)

        sid, why = await self.submitter.submit(sid, len(recipients), len(content) + 512, build)
        if why is not None:
            self.stats.refuse(source.name, "broker")
            log.warning("submission %s of source %s not accepted: %s", sid, source.name, why)
            return f"451 4.3.0 Not accepted: {why}; try again later"
        self.stats.accept(source.name, len(recipients), len(content))
        return f"250 2.0.0 OK queued as {sid}"


def allowed(domain: str, patterns: tuple[str, ...]) -> bool:
    """`domain` (A-labels, lower case) is one of `patterns` or under a `*.suffix` of them."""
    domain = domain.lower()
    for pattern in patterns:
        if domain == pattern or (pattern.startswith("*.") and domain.endswith(pattern[1:])):
            return True
    return False
