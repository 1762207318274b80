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

import ipaddress
import logging
import re

from mta.intake.address import InvalidMessage, parse_address
from mta.routing.routes import from_domains
from mta.submission import message
from mta.submission.sources import client_address

log = logging.getLogger("mta.submission")

_BARE = re.compile(rb"\r\n|\r|\n")


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

    # ---- connection

    def connected(self, session) -> None:
        peer = session.peer
        session.client = peer[0] if isinstance(peer, tuple) else str(peer)
        self.stats.connections[self.listener] = self.stats.connections.get(self.listener, 0) + 1

    async def handle_PROXY(self, server, session, envelope, proxy) -> bool:
        """A PROXY header is believed only from the configured load balancers."""
        peer = client_address(session.client or "")
        if peer is None or not any(peer.version == n.version and peer in n for n in self.proxy_from):
            log.warning("listener %s: PROXY header from %s, which is not in proxy_from: closed",
                        self.listener, session.client)
            return False
        if not proxy.valid or proxy.src_addr is None:
            return False
        session.client = str(proxy.src_addr)
        return True

    async def handle_EHLO(self, server, session, envelope, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        return responses[:-1] + ["250-PIPELINING", responses[-1]]

    # ---- AUTH

    async def login(self, session, username: str, password: bytes):
        """(the reply to a failed login or None, the source or None, whether to close now)."""
        client = session.client
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
        if known is not None and known.allows(client_address(client)):
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
            return "530 5.7.0 Authentication required"
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
        trace = message.received(session.host_name or "unknown", session.client, self.hostname, protocol, sid,
                                 source.name, recipients, self._wall())
        why = await self.submitter.submit(sid, len(recipients), lambda indexes: message.publishes(
            sid, source.source, envelope.mail_from, recipients, content, trace, indexes))
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
