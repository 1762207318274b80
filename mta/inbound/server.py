"""An inbound listener (SPEC §8): where receivers send bounces and feedback-loop reports.

Anyone may connect (bounces come from every mail server there is), with any envelope
sender, the null one first; but only mail to the listener's `domains` is taken (550 5.7.1
for any other recipient), and nothing taken here is ever sent on: it is read and becomes
results, list entries or a kept copy (mta.inbound.receiver). No AUTH is offered.

Bounded: `max_connections` at once (421 beyond), half of them at most from one client
(an IPv4 address or an IPv6 /64: anyone may connect, and one host holding every
connection open would have everyone else's bounces refused), 100 recipients per mail,
the listener's `max_message_size`, aiosmtpd's command limits and timeouts. The mail is read like a
submission (mta.submission.server.read_data): up to the lone dot, without a line length
limit (bounces return long HTML lines).
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter

from aiosmtpd.smtp import SMTP, Envelope, Session

from mta.config import Inbound
from mta.submission.policy import allowed
from mta.submission.server import data_begins, getaddr, read_data

log = logging.getLogger("mta.inbound")

MAX_RECIPIENTS = 100


def client(peer) -> str:
    """Whom a connection counts against: its IPv4 address, or its IPv6 /64 (one host has
    a whole /64 to connect from)."""
    host = peer[0] if isinstance(peer, tuple) and peer else str(peer)
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class Reports:
    """The aiosmtpd handler of an inbound listener: what it accepts, and where mail goes."""

    def __init__(self, listener: Inbound, receiver):
        self.listener = listener
        self.receiver = receiver  # mta.inbound.receiver.Receiver
        self.connections = 0
        self.clients: Counter[str] = Counter()  # connections by `client`
        self.per_client = max(1, listener.max_connections // 2)
        self.refused: dict[str, int] = {}  # by why: relay, recipients, size, connections, client

    def refuse(self, why: str) -> None:
        self.refused[why] = self.refused.get(why, 0) + 1

    async def handle_exception(self, error: Exception) -> str:
        """What no check foresaw: logged here, and the sender hears only to try again
        (aiosmtpd's own answer is a 500 with the error's text, and the report is lost)."""
        log.error("inbound %s: unexpected error", self.listener.address, exc_info=error)
        return "451 4.3.0 Local error, try again later"

    async def handle_RCPT(self, server, session: Session, envelope: Envelope, address: str, options) -> str:
        domain = address.rpartition("@")[2].rstrip(".").lower()
        if not allowed(domain, self.listener.domains):
            self.refuse("relay")
            return "550 5.7.1 Relaying denied: this server takes reports for its own domains only"
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            self.refuse("recipients")
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"


class InboundServer(SMTP):
    """One connection to an inbound listener."""

    _getaddr = getaddr
    refusal: str | None = None
    counted = False
    client = ""  # `client` of the peer

    def __init__(self, reports: Reports, **kwargs):
        self.reports = reports
        super().__init__(reports, **kwargs)

    def connection_made(self, transport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            reports = self.reports
            self.client = client(transport.get_extra_info("peername"))
            if reports.connections >= reports.listener.max_connections:
                self.refusal = "421 4.7.0 Too many connections, try again later"
                reports.refuse("connections")
            elif reports.clients[self.client] >= reports.per_client:
                self.refusal = "421 4.7.0 Too many connections from your address, try again later"
                reports.refuse("client")
            else:
                reports.connections += 1
                reports.clients[self.client] += 1
                self.counted = True

    def connection_lost(self, error) -> None:
        if self.counted:
            self.counted = False
            reports = self.reports
            reports.connections -= 1
            reports.clients[self.client] -= 1
            if reports.clients[self.client] <= 0:
                del reports.clients[self.client]
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if self.refusal is not None:
            await self.push(self.refusal)
            self.transport.close()
            return
        await super()._handle_client()

    async def smtp_DATA(self, arg: str) -> None:
        if not await data_begins(self, arg):
            return
        content, too_big = await read_data(self._reader, self.reports.listener.max_message_size)
        if too_big:
            self.reports.refuse("size")
            status = "552 5.3.4 Message too big"
        else:
            peer = self.session.peer[0] if isinstance(self.session.peer, tuple) else str(self.session.peer)
            try:
                status = await self.reports.receiver.received(content, self.envelope.mail_from or "",
                                                              list(self.envelope.rcpt_tos), peer)
            except Exception as error:  # the sender keeps its copy and tries again
                status = await self.reports.handle_exception(error)
        self._set_post_data_state()
        await self.push(status)
