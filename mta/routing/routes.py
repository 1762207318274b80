"""Customer smarthosts (SPEC §3 `routes:`): mail of a sender domain, optionally only mail
carrying one of the route's tags, leaves through the customer's own server (Office 365,
Google Workspace, their relay) instead of the recipient's MX.

Theory of operation:
- A route matches the envelope sender's domain (MAIL FROM, the default) or, with
  `sender_match: from`, the domain of the From: header. Routes are tried in file order;
  the first that matches wins, so a route with `tags` goes above the catch-all one of the
  same domain. `*.example.com` matches every subdomain.
- Each route is one destination, `route:NAME`, with the default policy under the route's
  own keys: its own connections, rates, TLS policy and pause state, so one customer's
  broken server slows or stops only that customer's mail.
- `"[host]:port"` connects to host (its A/AAAA records, or the literal address), no MX
  lookup; `host:port` looks up the MX of host first, as Postfix's relayhost does. Port 465
  means TLS from the first byte (`implicit_tls` overrides); other ports use STARTTLS.
- The password comes from `password_env` or `password_file`, read when the rules are
  loaded; it never appears in a log, a result or a repr (`Credentials`).
- The credentials go out only over TLS whose certificate verified for the smarthost's name
  (the system CAs or `ca_file`), whatever the route's `tls` policy: an unverified
  certificate could be anyone's, and AUTH would hand them the password. A smarthost
  without STARTTLS or with a certificate that does not verify gets no AUTH and no mail;
  the message is deferred with the reason. `tls_verify: false` allows unverified TLS for
  a route that needs it (a self-signed relay), with a warning at every load of the rules.
- A smarthost that refuses the credentials (535, any 5xx to AUTH) will refuse every
  message: the route is paused (the operator pause of `mta pause`, so `mta resume
  route:NAME` lifts it), the message that met the refusal is deferred with the reason,
  and the rest is held, not bounced. The pause also ends by itself when the password file
  changes.
"""

from __future__ import annotations

import dataclasses
import email.utils
import ipaddress
import logging
import os
import re
import math
from collections.abc import Callable, Mapping

from mta.config import ConfigError, Route
from shaper.pauses import Pauses
from mta.intake.idn import ascii_domain
from mta.intake.message import Job
from mta.routing.mx import DnsFailure, MxAnswer, MxHost, MxResolver, parse_static
from mta.routing.rules import Resolved, Rules
from mta.smtp.client import Credentials, Reply, Timeouts
from mta.smtp.connector import Connector
from mta.smtp.session import Session

log = logging.getLogger("mta.routes")

DEFAULT_PORT = 25
SMARTHOST_TTL = 60.0  # seconds a smarthost's addresses are reused before a new lookup
CREDENTIAL_CHECK = 5.0  # seconds between looks at a paused route's password file

_FROM = re.compile(rb"^From:[ \t]*([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", re.IGNORECASE | re.MULTILINE)


def from_domain(data: bytes) -> str | None:
    """The domain of the first address in the From: header of a message, in the form
    intake gives the envelope's (lower case, A-labels: mta.intake.idn), so one route matches both."""
    end = data.find(b"\r\n\r\n")  # the header only: never copy a large body
    m = _FROM.search(data[:end] if end >= 0 else data)
    if m is None:
        return None
    value = m.group(1).replace(b"\r\n", b"").decode("utf-8", "replace")
    for _, address in email.utils.getaddresses([value]):
        if "@" in address:
            domain = address.rpartition("@")[2]
            return ascii_domain(domain) or domain.strip().rstrip(".").lower() or None
    return None


def _read_password(route: Route, environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(password, problem): from the environment variable or the file the route names."""
    if route.password_env:
        value = environ.get(route.password_env)
        if not value:
            return None, f"environment variable {route.password_env} is not set or empty"
        return value, None
    if route.password_file:
        try:
            with open(route.password_file, encoding="utf-8") as fh:
                value = fh.read().strip("\r\n")
        except OSError as exc:
            return None, f"cannot read password file {route.password_file}: {exc.strerror}"
        except UnicodeDecodeError:
            return None, f"password file {route.password_file} is not UTF-8 text"
        if not value:
            return None, f"password file {route.password_file} is empty"
        return value, None
    return None, None


def _file_stamp(path: str | None) -> tuple[int, int] | None:
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


@dataclasses.dataclass(slots=True)
class RouteEntry:
    index: int
    route: Route
    key: str  # destination key `route:NAME`
    resolved: Resolved
    host: str
    port: int
    literal: bool  # "[host]": no MX lookup
    implicit_tls: bool
    credentials: Credentials | None
    file_stamp: tuple[int, int] | None = None

    @property
    def smarthost(self) -> str:
        return self.route.smarthost


class _Index:
    """Routes by sender domain: exact names, then `*.suffix` wildcards (longest first)."""

    def __init__(self, entries: list[RouteEntry]):
        self.exact: dict[str, list[RouteEntry]] = {}
        self.wildcards: list[RouteEntry] = []
        for entry in entries:
            if entry.route.sender_domain.startswith("*."):
                self.wildcards.append(entry)
            else:
                self.exact.setdefault(entry.route.sender_domain, []).append(entry)

    def first(self, domain: str, tags: tuple[str, ...]) -> RouteEntry | None:
        best = None
        for entry in self.exact.get(domain, ()):
            if not entry.route.tags or any(t in tags for t in entry.route.tags):
                best = entry
                break
        for entry in self.wildcards:
            if best is not None and entry.index > best.index:
                break
            if domain.endswith(entry.route.sender_domain[1:]) and (
                    not entry.route.tags or any(t in tags for t in entry.route.tags)):
                return entry
        return best


class RouteTable:
    """The routes in force, their credentials and which of them a failed AUTH has paused."""

    def __init__(self, routes: tuple[Route, ...], rules: Rules, pauses: Pauses,
                 clock: Callable[[], float], environ: Mapping[str, str] | None = None):
        self._pauses = pauses
        self._clock = clock
        self._environ = os.environ if environ is None else environ
        self.faults: dict[str, str] = {}  # route key -> why it is paused
        self.on_fault: Callable[[str, str], None] = lambda key, why: None  # told to the other nodes
        self._adopted: dict[str, float] = {}  # route key -> when another node's fault is over here
        self._next_check: dict[str, float] = {}
        self._load(routes, rules)

    def _load(self, routes: tuple[Route, ...], rules: Rules) -> None:
        problems = []
        entries = []
        for i, route in enumerate(routes):
            password, problem = _read_password(route, self._environ)
            if problem:
                problems.append(f"routes[{i}] ({route.name}): {problem}")
                continue
            if password is not None and not route.username:
                problems.append(f"routes[{i}] ({route.name}).username: required when a password is given")
                continue
            host, port, literal = parse_static(route.smarthost)
            port = port or DEFAULT_PORT
            entries.append(RouteEntry(
                index=i, route=route, key=f"route:{route.name}", resolved=rules.route(route),
                host=host.lower(), port=port, literal=literal,
                implicit_tls=route.implicit_tls if route.implicit_tls is not None else port == 465,
                credentials=Credentials(route.username, password) if password is not None else None,
                file_stamp=_file_stamp(route.password_file)))
        if problems:
            raise ConfigError(problems)
        for entry in entries:
            if entry.credentials is not None and not entry.route.tls_verify:
                log.warning("routes[%d] (%s): tls_verify is false: the credentials of %s go to %s over TLS whose "
                            "certificate is not verified, so whoever can intercept the connection can take them",
                            entry.index, entry.route.name, entry.route.username, entry.smarthost)
        self.entries = entries
        self._by_key = {e.key: e for e in entries}
        self._envelope = _Index([e for e in entries if e.route.sender_match == "envelope"])
        self._from = _Index([e for e in entries if e.route.sender_match == "from"])
        self._any_envelope = bool(self._envelope.exact or self._envelope.wildcards)
        self._any_from = bool(self._from.exact or self._from.wildcards)

    def reload(self, routes: tuple[Route, ...], rules: Rules) -> None:
        """New rules: re-read the passwords; a route paused for its credentials resumes when
        they changed. Raises ConfigError (the old table stays) when a password is missing."""
        before = {key: self._by_key[key].credentials for key in self.faults if key in self._by_key}
        self._load(routes, rules)
        for key, credentials in before.items():
            entry = self._by_key.get(key)
            if entry is None or entry.credentials != credentials:
                self._resume(key, "its credentials changed with the new rules")

    def __bool__(self) -> bool:
        return bool(self.entries)

    def entry(self, key: str) -> RouteEntry | None:
        return self._by_key.get(key)

    def match(self, job: Job) -> RouteEntry | None:
        """The route a message leaves by, or None for MX delivery."""
        best = None
        tags = job.tags or ()
        if self._any_envelope and job.sender is not None:
            best = self._envelope.first(job.sender.ascii_domain, tags)
        if self._any_from:
            domain = from_domain(job.data)
            if domain is not None:
                other = self._from.first(domain, tags)
                if other is not None and (best is None or other.index < best.index):
                    best = other
        if best is not None and self.faults and best.key in self.faults:
            self._recheck(best)
        return best

    def connector(self, key: str, base: Connector) -> RouteConnector:
        return RouteConnector(self, key, base)

    # ---- authentication failures

    def auth_failed(self, key: str, reply: Reply) -> Reply:
        """The smarthost refused the route's credentials: pause the route (once) and return
        the reply the message's result carries, saying so."""
        entry = self._by_key.get(key)
        name = key.partition(":")[2]
        now = self._clock()
        if key not in self.faults or not self._pauses.paused(now, key):  # not yet, or resumed since
            user = entry.route.username if entry is not None else "?"
            self.faults[key] = f"authentication as {user} refused: {reply}"
            self._next_check[key] = now + CREDENTIAL_CHECK
            if self._pauses.apply({"command": "pause", "target": key}, now) is None:
                log.warning("%s: the route could not be paused: %s", key,
                            self._pauses.refusal({"command": "pause", "target": key}, now))
            log.warning("%s: the smarthost %s refused the credentials of %s (%s); the route is paused "
                        "and its mail held (not bounced) until its password changes or `mta resume %s`",
                        key, entry.smarthost if entry else "?", user, reply, key)
            self.on_fault(key, self.faults[key])
        note = (f" (route {name} paused: the smarthost refused its credentials; its mail is held "
                f"until they change or `mta resume {key}`)")
        return Reply(reply.code, reply.text + note, reply.phase, reply.tls)

    def adopt_fault(self, key: str, why: str, until: float) -> None:
        """Another node's smarthost refused this route's credentials: pause it here too, until
        `until` (wall time) or until its password changes here, whichever comes first."""
        now = self._clock()
        if key not in self._by_key or (key in self.faults and self._pauses.paused(now, key)):
            return
        self._adopted[key] = until
        self.faults[key] = f"{why} (seen by another node)"
        self._next_check[key] = now + CREDENTIAL_CHECK
        if self._pauses.apply({"command": "pause", "target": key}, now) is not None:
            log.warning("%s: another node's smarthost refused the route's credentials; paused here too", key)

    def status(self) -> list[dict]:
        """What `mta status` shows of each route; never a credential."""
        now = self._clock()
        out = []
        for e in self.entries:
            paused = self._pauses.paused(now, e.key)
            out.append({"route": e.key, "sender_domain": e.route.sender_domain, "smarthost": e.smarthost,
                        "username": e.route.username, "paused": paused,
                        "reason": self.faults.get(e.key) if paused else None})
        return out

    def _recheck(self, entry: RouteEntry) -> None:
        """A paused route's mail came by: has the operator resumed it, or fixed the password?"""
        now = self._clock()
        key = entry.key
        if not self._pauses.paused(now, key):
            del self.faults[key]  # resumed by `mta resume`
            self._next_check.pop(key, None)
            return
        if now >= self._adopted.get(key, math.inf):  # another node's fault, over: try the credentials here
            self._resume(key, "the refusal another node saw is over")
            return
        if now < self._next_check.get(key, 0.0) or not entry.route.password_file:
            return
        self._next_check[key] = now + CREDENTIAL_CHECK
        stamp = _file_stamp(entry.route.password_file)
        if stamp is None or stamp == entry.file_stamp:
            return
        entry.file_stamp = stamp
        password, problem = _read_password(entry.route, self._environ)
        if problem:
            log.warning("%s: %s; the route stays paused", key, problem)
            return
        credentials = Credentials(entry.route.username, password)
        if credentials != entry.credentials:
            entry.credentials = credentials
            self._resume(key, f"its password file {entry.route.password_file} changed")

    def _resume(self, key: str, why: str) -> None:
        self.faults.pop(key, None)
        self._adopted.pop(key, None)
        self._next_check.pop(key, None)
        self._pauses.apply({"command": "resume", "target": key}, self._clock())
        log.info("%s: %s; the route is resumed and its held mail comes back", key, why)


class RouteConnector:
    """The connector a route's destination uses: the shared one, with the route's
    credentials, TLS wrapper mode and CA file (read at each connection, so a reload or a
    new password applies to the next session)."""

    def __init__(self, table: RouteTable, key: str, base: Connector):
        self._table = table
        self._key = key
        self._base = base

    async def open(self, mx: str, ip: str, port: int, *, tls: str, timeouts: Timeouts, tlsa=None) -> Session:
        # (tlsa: a smarthost is no MX host: DANE does not apply)
        entry = self._table.entry(self._key)
        if entry is None:  # the route was removed by a reload: plain delivery to the smarthost
            return await self._base.open(mx, ip, port, tls=tls, timeouts=timeouts)
        return await self._base.open(mx, ip, port, tls=tls, timeouts=timeouts, auth=entry.credentials,
                                     implicit_tls=entry.implicit_tls, ca_file=entry.route.ca_file,
                                     auth_verified=entry.route.tls_verify)


async def resolve_smarthost(resolver: MxResolver, entry: RouteEntry) -> MxAnswer | DnsFailure:
    """Where a route's mail goes. Every failure is temporary: a smarthost that does not
    resolve is the route's fault, never a reason to bounce the customer's mail."""
    host, port = entry.host, entry.port
    if entry.literal:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            answer = await resolver.resolve_static((f"{host}:{port}",))
        else:
            return MxAnswer((MxHost(host, 0, (host,), port),))
    else:
        answer = await resolver.resolve(host)
        if isinstance(answer, MxAnswer):
            answer = MxAnswer(tuple(dataclasses.replace(h, port=port) for h in answer.hosts), answer.implicit)
    if isinstance(answer, DnsFailure):
        return DnsFailure(False, "4.4.3", f"smarthost {entry.smarthost} of {entry.key}: {answer.description}")
    return answer
