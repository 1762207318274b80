"""Scripted SMTP receivers: one aiosmtpd listener per loopback address, all on one port,
all served by ONE background thread with its own event loop.

Behaviour is scripted by the recipient's local-part prefix (case-insensitive):

=========  ===============================================================
``hard-``  ``550 5.1.1`` at RCPT (hard bounce)
``full-``  ``552 5.2.2`` at RCPT (mailbox full: soft bounce)
``temp2-`` ``451 4.3.0`` at RCPT the first two times that exact recipient is seen,
           then accepted
``temp-``  ``451 4.3.0`` at RCPT, always
``drop-``  the DATA content is read, then the connection is closed without a reply
``spam-``  ``554 5.7.1`` to the end of the DATA content (the message is refused)
other      ``250``
=========  ===============================================================

More rules can be added (``add_rule``), a listener can be given a refusing greeting
(``set_greeting``), a slow DATA reply (``set_data_delay``), a cap on simultaneous sessions
above which it greets with "421 too many connections" (``set_session_limit``), or a cap on
messages per second above which RCPT gets "421 rate limited" (``set_rate_limit``), as
real receivers do; or it can misbehave: never answer (``set_manner(sink, "tarpit")``),
hang up after the banner (``"hangup"``), answer DATA with "250 2.0.0 Ok" instead of 354 and
note every byte it is sent after that lie (``"data250"``, ``after_lie()``), or be slow on
every reply (``set_reply_delay``).
``set_pipelining(sink, False)`` leaves PIPELINING out of the EHLO reply,
``set_eight_bit_mime(sink, False)`` 8BITMIME (and SMTPUTF8, which needs it),
``set_smtputf8(sink, False)`` SMTPUTF8 alone (8BITMIME still offered). Per sink, the farm
notes each message whose content arrived in one chunk with the next transaction's commands
(RFC 2920 pipelining across transactions): ``pipelined()``.

A farm can speak TLS: ``tls_context`` offers STARTTLS, ``implicit_tls`` wraps every
connection in TLS from the first byte (port 465 style); ``auth`` ({login: password})
offers AUTH PLAIN and LOGIN (after TLS) and refuses MAIL without it;
``set_broken_starttls(True)`` answers STARTTLS with 220 and then garbage instead of a
handshake; ``auth_commands()`` counts every AUTH command a farm with ``auth`` was sent.
Accepted messages record the login and the TLS cipher of their session. TLS farms need
``use_uvloop=False`` (aiosmtpd's STARTTLS drives asyncio's own TLS layer).

Every accepted message is recorded (sink address = the local address the client
connected to, mail_from, rcpt, raw data, time, Message-ID local part); per sink address
the farm counts connections and the maximum number of concurrent sessions.  All
accessors are thread-safe and return copies.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, syntax

from .util import free_port

log = logging.getLogger(__name__)

_MSGID_RE = re.compile(rb"^Message-ID:[ \t]*<([^@>\r\n]+)@", re.IGNORECASE | re.MULTILINE)

REPLY_HARD = "550 5.1.1 <{rcpt}>: Recipient address rejected: user unknown"
REPLY_FULL = "552 5.2.2 <{rcpt}>: Mailbox full"
REPLY_TEMP = "451 4.3.0 <{rcpt}>: Temporary failure, try again later"
REPLY_SPAM = "554 5.7.1 Message content rejected"
_AUTH_RE = re.compile(rb"(?:^|\n)AUTH\b", re.IGNORECASE)
_PIPELINED_RE = re.compile(rb"\r\n\.\r\nMAIL FROM:<[^>\r\n]*>[^\r\n]*\r\nRCPT TO:<([^>\r\n]*)>", re.IGNORECASE)


@dataclass(frozen=True)
class Accepted:
    sink: str                 # local address the client connected to (which "MX")
    peer: Tuple[str, int]     # client address
    mail_from: str
    rcpt: str
    data: bytes               # message as received (CRLF, dot-unstuffed)
    time: float               # time.time() when the final 250 was sent
    msg_id: Optional[str]     # the ID of "Message-ID: <ID@...>", None when absent
    helo: Optional[str] = None
    mail_options: Tuple[str, ...] = ()
    rcpt_options: Tuple[str, ...] = ()
    login: Optional[str] = None   # AUTH login of the session, None when not authenticated
    cipher: Optional[str] = None  # TLS cipher of the session, None for plaintext


@dataclass(frozen=True)
class Event:
    """A refused RCPT or a dropped DATA."""
    kind: str                 # "rcpt-reply" or "drop"
    sink: str
    rcpt: str
    reply: str
    time: float


def message_id_of(data: bytes) -> Optional[str]:
    head = data.split(b"\r\n\r\n", 1)[0]
    m = _MSGID_RE.search(head)
    return m.group(1).decode("utf-8", "replace") if m else None


class _SinkSMTP(SMTP):
    """aiosmtpd SMTP that knows its farm and which local address it serves."""

    def __init__(self, farm: "SinkFarm", sink: str, **kw):
        self.farm = farm
        self.sink = sink
        super().__init__(farm._handler, **kw)

    def connection_made(self, transport):
        if getattr(self, "_original_transport", None) is None:  # not again after STARTTLS
            self.farm._on_connect(self.sink)
            self.farm._live.add(self)
        super().connection_made(transport)

    def data_received(self, data):
        if self.farm.auth is not None and _AUTH_RE.search(data):
            self.farm._note_auth_command(self.sink)
        if getattr(self, "_lied", False):
            self.farm._note_after_lie(self.sink, data)
        if b"\r\n.\r\n" in data:
            self.farm._note_pipelined(self.sink, data)
        super().data_received(data)

    def connection_lost(self, error):
        self.farm._on_disconnect(self.sink, getattr(self, "_admitted", False))
        self.farm._live.discard(self)
        super().connection_lost(error)

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str):
        if self.farm._broken_starttls:
            await self.push("220 Ready to start TLS")
            assert self.transport is not None
            self.transport.write(b"this is no TLS handshake\r\n" * 8)
            self.transport.close()
            return
        await super().smtp_STARTTLS(arg)

    async def smtp_DATA(self, arg: str):
        if self.farm._manner.get(self.sink) == "data250":  # "accepted" without taking the content
            self.farm._note_after_lie(self.sink, b"")
            self._lied = True
            await self.push("250 2.0.0 Ok")
            return
        await super().smtp_DATA(arg)

    async def push(self, status):
        delay = self.farm._reply_delay.get(self.sink)
        if delay:
            await asyncio.sleep(delay)
        await super().push(status)

    async def _handle_client(self):
        manner = self.farm._manner.get(self.sink)
        if manner == "tarpit":        # accept the connection, never say a word
            await asyncio.sleep(3600)
            return
        if manner == "hangup":        # a normal banner, then the connection is closed
            assert self.transport is not None
            self.transport.write(f"220 {self.hostname} ESMTP\r\n".encode())
            self.transport.close()
            return
        greeting = self.farm._greetings.get(self.sink)
        if greeting is None:
            greeting = self.farm._admit(self.sink)
            self._admitted = greeting is None
        if greeting is not None:
            assert self.transport is not None
            self.transport.write(greeting.encode() + b"\r\n")
            self.transport.close()
            return
        await super()._handle_client()


class _Handler:
    def __init__(self, farm: "SinkFarm"):
        self.farm = farm

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        # aiosmtpd reads commands one by one from a stream, so pipelined commands work;
        # advertise it.
        if server.sink in self.farm._no_eight_bit_mime:
            responses = [r for r in responses if "8BITMIME" not in r and "SMTPUTF8" not in r]
        elif server.sink in self.farm._no_smtputf8:
            responses = [r for r in responses if "SMTPUTF8" not in r]
        if server.sink in self.farm._no_pipelining:
            return responses
        return responses[:-1] + ["250-PIPELINING"] + responses[-1:]

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.farm._rcpt_reply(server.sink, address)
        if reply is None:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
            return "250 2.1.5 OK"
        return reply

    async def handle_DATA(self, server, session, envelope):
        farm = self.farm
        if any(_local(r).startswith("drop-") for r in envelope.rcpt_tos):
            farm._record_drop(server.sink, envelope.rcpt_tos)
            server.transport.close()
            # connection_lost() cancels this task; never reply.
            await asyncio.sleep(3600)
            return "421 unreachable"
        delay = farm._data_delay.get(server.sink)
        if delay:
            await asyncio.sleep(delay)
        if any(_local(r).startswith("spam-") for r in envelope.rcpt_tos):
            return REPLY_SPAM
        cipher = server.transport.get_extra_info("cipher") if server.transport is not None else None
        n = farm._record_accept(server.sink, session, envelope,
                                login=getattr(session, "auth_data", None) if session.authenticated else None,
                                cipher=cipher[0] if cipher else None)
        return f"250 2.0.0 OK queued as S{n}"


def _local(address: str) -> str:
    return address.rsplit("@", 1)[0].strip('"').lower()


class SinkFarm:
    def __init__(self, addresses: Iterable[str], port: Optional[int] = None, *,
                 idle_timeout: float = 300.0, use_uvloop: bool = True,
                 tls_context=None, implicit_tls=None, auth: Optional[Dict[str, str]] = None):
        self.addresses = list(dict.fromkeys(addresses))
        self._auto_port = port is None
        self.port = port if port is not None else free_port(self.addresses)
        self.idle_timeout = idle_timeout
        self.use_uvloop = use_uvloop
        self._handler = _Handler(self)
        self._lock = threading.Lock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._servers: list = []
        self._live: set = set()                         # sessions (loop thread only)
        self._rules: List[Tuple[str, str, Optional[int]]] = []  # (prefix, reply template, times)
        self._greetings: Dict[str, str] = {}
        self._data_delay: Dict[str, float] = {}
        self._session_limit: Dict[str, int] = {}
        self._rate_limit: Dict[str, float] = {}
        self._manner: Dict[str, str] = {}              # sink -> "tarpit" / "hangup"
        self._reply_delay: Dict[str, float] = {}
        self._no_pipelining: set = set()
        self._no_eight_bit_mime: set = set()
        self._no_smtputf8: set = set()
        self.tls_context = tls_context
        self.implicit_tls = implicit_tls
        self.auth = dict(auth) if auth is not None else None
        self._broken_starttls = False
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget every record and counter (not the scripted rules)."""
        with self._lock:
            self._accepted: List[Accepted] = []
            self._events: List[Event] = []
            self._rcpt_seen: collections.Counter = collections.Counter()
            self._connections: collections.Counter = collections.Counter()
            self._current: collections.Counter = collections.Counter()
            self._max_current: collections.Counter = collections.Counter()
            self._admitted: collections.Counter = collections.Counter()
            self._max_admitted: collections.Counter = collections.Counter()
            self._recent: Dict[str, collections.deque] = collections.defaultdict(collections.deque)
            self._seq = 0
            self._auth_results: List[Tuple[str, bool]] = []
            self._pipelined: List[Tuple[str, Optional[str], str]] = []
            self._after_lie: Dict[str, bytearray] = {}
            self._auth_commands: collections.Counter = collections.Counter()

    def _on_connect(self, sink: str) -> None:
        with self._lock:
            self._connections[sink] += 1
            self._current[sink] += 1
            if self._current[sink] > self._max_current[sink]:
                self._max_current[sink] = self._current[sink]

    def _on_disconnect(self, sink: str, admitted: bool = False) -> None:
        with self._lock:
            self._current[sink] -= 1
            if admitted:
                self._admitted[sink] -= 1

    def _admit(self, sink: str) -> Optional[str]:
        """None when a new session may start; else the refusing greeting."""
        with self._lock:
            limit = self._session_limit.get(sink)
            if limit is not None and self._admitted[sink] >= limit:
                reply = f"421 4.7.0 Too many connections from your IP (limit {limit})"
                self._events.append(Event("refused", sink, "", reply, time.time()))
                return reply
            self._admitted[sink] += 1
            if self._admitted[sink] > self._max_admitted[sink]:
                self._max_admitted[sink] = self._admitted[sink]
            return None

    def _rcpt_reply(self, sink: str, address: str) -> Optional[str]:
        local = _local(address)
        with self._lock:
            self._rcpt_seen[address] += 1
            seen = self._rcpt_seen[address]
            reply = None
            limit = self._rate_limit.get(sink)
            if limit is not None:
                now = time.time()
                recent = self._recent[sink]
                while recent and recent[0] <= now - 1.0:
                    recent.popleft()
                if len(recent) >= limit:
                    reply = "421 4.7.0 Rate limited: too many messages per second, slow down"
                    self._events.append(Event("rcpt-reply", sink, address, reply, now))
                    return reply
                recent.append(now)
            for prefix, template, times in self._rules:
                if local.startswith(prefix) and (times is None or seen <= times):
                    reply = template
                    break
            else:
                if local.startswith("hard-"):
                    reply = REPLY_HARD
                elif local.startswith("full-"):
                    reply = REPLY_FULL
                elif local.startswith("temp2-"):
                    reply = REPLY_TEMP if seen <= 2 else None
                elif local.startswith("temp-"):
                    reply = REPLY_TEMP
            if reply is not None:
                reply = reply.format(rcpt=address)
                self._events.append(Event("rcpt-reply", sink, address, reply, time.time()))
            return reply

    def _note_pipelined(self, sink: str, data: bytes) -> None:
        for m in _PIPELINED_RE.finditer(data):
            ids = _MSGID_RE.findall(data, 0, m.start())
            with self._lock:
                self._pipelined.append((sink, ids[-1].decode("utf-8", "replace") if ids else None,
                                        m.group(1).decode("utf-8", "replace")))

    def _note_auth_command(self, sink: str) -> None:
        with self._lock:
            self._auth_commands[sink] += 1

    def _note_after_lie(self, sink: str, data: bytes) -> None:
        with self._lock:
            self._after_lie.setdefault(sink, bytearray()).extend(data)

    def _record_drop(self, sink: str, rcpts: List[str]) -> None:
        now = time.time()
        with self._lock:
            for r in rcpts:
                self._events.append(Event("drop", sink, r, "", now))

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword) and self.auth is not None
              and self.auth.get(auth_data.login.decode("utf-8", "replace")) == auth_data.password.decode("utf-8", "replace"))
        login = auth_data.login.decode("utf-8", "replace") if isinstance(auth_data, LoginPassword) else "?"
        with self._lock:
            self._auth_results.append((login, ok))
        if ok:
            return AuthResult(success=True, auth_data=login)
        return AuthResult(success=False, handled=False)  # 535 5.7.8 Authentication credentials invalid

    def _record_accept(self, sink: str, session, envelope, *, login: Optional[str] = None,
                       cipher: Optional[str] = None) -> int:
        data = envelope.original_content or b""
        msg_id = message_id_of(data)
        now = time.time()
        with self._lock:
            self._seq += 1
            for rcpt in envelope.rcpt_tos:
                self._accepted.append(Accepted(
                    sink=sink, peer=tuple(session.peer or ("", 0)), mail_from=envelope.mail_from,
                    rcpt=rcpt, data=data, time=now, msg_id=msg_id, helo=session.host_name,
                    mail_options=tuple(envelope.mail_options or ()),
                    rcpt_options=tuple(envelope.rcpt_options or ()), login=login, cipher=cipher))
            return self._seq

    # ------------------------------------------------------------------ scripting
    def add_rule(self, prefix: str, reply: str, times: Optional[int] = None) -> None:
        """RCPT to a local part starting with ``prefix`` gets ``reply`` ({rcpt} is filled);
        with ``times``, only the first ``times`` RCPTs of each such address do."""
        with self._lock:
            self._rules.append((prefix.lower(), reply, times))

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()
            self._greetings.clear()
            self._data_delay.clear()
            self._session_limit.clear()
            self._rate_limit.clear()
            self._manner.clear()
            self._reply_delay.clear()
            self._no_pipelining.clear()
            self._no_smtputf8.clear()

    def set_greeting(self, sink: str, reply: Optional[str]) -> None:
        """Connections to ``sink`` get ``reply`` (e.g. "421 4.7.0 Too many connections")
        instead of the 220 banner and are closed; None restores the normal banner."""
        with self._lock:
            if reply is None:
                self._greetings.pop(sink, None)
            else:
                self._greetings[sink] = reply

    def set_session_limit(self, sink: str, limit: Optional[int]) -> None:
        """At most ``limit`` sessions at once on ``sink``; one more is greeted with
        "421 4.7.0 Too many connections" and closed (an event of kind "refused")."""
        with self._lock:
            if limit is None:
                self._session_limit.pop(sink, None)
            else:
                self._session_limit[sink] = limit

    def set_rate_limit(self, sink: str, per_second: Optional[float]) -> None:
        """At most ``per_second`` RCPTs accepted on ``sink`` in any 1 s; the rest get
        "421 4.7.0 Rate limited" (recorded as rcpt-reply events)."""
        with self._lock:
            if per_second is None:
                self._rate_limit.pop(sink, None)
            else:
                self._rate_limit[sink] = per_second

    def set_manner(self, sink: str, manner: Optional[str]) -> None:
        """``"tarpit"``: connections to ``sink`` are accepted and never answered;
        ``"hangup"``: they get the 220 banner and are closed at once; ``"data250"``: DATA
        is answered 250 instead of 354 (see ``after_lie``); None: normal."""
        if manner not in (None, "tarpit", "hangup", "data250"):
            raise ValueError(f"unknown manner {manner!r}")
        with self._lock:
            if manner is None:
                self._manner.pop(sink, None)
            else:
                self._manner[sink] = manner

    def set_pipelining(self, sink: str, offered: bool) -> None:
        """Whether ``sink`` offers PIPELINING in its EHLO reply (it does unless told)."""
        with self._lock:
            if offered:
                self._no_pipelining.discard(sink)
            else:
                self._no_pipelining.add(sink)

    def set_eight_bit_mime(self, sink: str, offered: bool) -> None:
        """Whether ``sink`` offers 8BITMIME (and SMTPUTF8) in its EHLO reply (it does unless told)."""
        with self._lock:
            if offered:
                self._no_eight_bit_mime.discard(sink)
            else:
                self._no_eight_bit_mime.add(sink)

    def set_smtputf8(self, sink: str, offered: bool) -> None:
        """Whether ``sink`` offers SMTPUTF8 in its EHLO reply (it does unless told); 8BITMIME
        stays offered either way."""
        with self._lock:
            if offered:
                self._no_smtputf8.discard(sink)
            else:
                self._no_smtputf8.add(sink)

    def after_lie(self) -> Dict[str, bytes]:
        """{sink: every byte received after a "data250" sink answered DATA with 250}, for
        each sink that told that lie (b"" when nothing came after it)."""
        with self._lock:
            return {sink: bytes(data) for sink, data in self._after_lie.items()}

    def pipelined(self) -> List[Tuple[str, Optional[str], str]]:
        """[(sink address, Message-ID local part of the message whose content ended the
        chunk's first part (None if not in the chunk), recipient of the transaction
        pipelined behind it)], one per content followed in the same chunk by MAIL/RCPT."""
        with self._lock:
            return list(self._pipelined)

    def set_reply_delay(self, sink: str, seconds: Optional[float]) -> None:
        """Wait ``seconds`` before every reply on ``sink``, the banner included (a slow
        receiver throughout, where ``set_data_delay`` slows the DATA reply only)."""
        with self._lock:
            if seconds:
                self._reply_delay[sink] = seconds
            else:
                self._reply_delay.pop(sink, None)

    def max_admitted(self) -> Dict[str, int]:
        """{sink address: most simultaneous sessions past the greeting}."""
        with self._lock:
            return dict(self._max_admitted)

    def set_data_delay(self, sink: str, seconds: Optional[float]) -> None:
        """Wait ``seconds`` before answering DATA on ``sink`` (slow receiver)."""
        with self._lock:
            if seconds:
                self._data_delay[sink] = seconds
            else:
                self._data_delay.pop(sink, None)

    def set_broken_starttls(self, broken: bool) -> None:
        """Offer STARTTLS, answer it with 220, then send garbage and hang up."""
        self._broken_starttls = broken

    # ------------------------------------------------------------------ accessors
    def auth_commands(self) -> Dict[str, int]:
        """{sink address: chunks received holding an AUTH command}, whether the sink
        offered AUTH or took it (an AUTH in plaintext is counted too)."""
        with self._lock:
            return dict(self._auth_commands)

    def auth_results(self) -> List[Tuple[str, bool]]:
        """[(login, accepted)] for every AUTH seen, in order (passwords are not kept)."""
        with self._lock:
            return list(self._auth_results)

    def accepted(self) -> List[Accepted]:
        with self._lock:
            return list(self._accepted)

    def count_by_id(self) -> Dict[str, int]:
        """{Message-ID local part: times accepted}."""
        with self._lock:
            c = collections.Counter(a.msg_id for a in self._accepted if a.msg_id is not None)
        return dict(c)

    def accepted_count(self) -> int:
        with self._lock:
            return len(self._accepted)

    def events(self) -> List[Event]:
        with self._lock:
            return list(self._events)

    def rcpt_attempts(self) -> Dict[str, int]:
        """{recipient address: RCPT commands seen}, whatever the reply."""
        with self._lock:
            return dict(self._rcpt_seen)

    def connections(self) -> Dict[str, int]:
        """{sink address: connections accepted}."""
        with self._lock:
            return dict(self._connections)

    def max_concurrent(self) -> Dict[str, int]:
        """{sink address: most simultaneous sessions seen}."""
        with self._lock:
            return dict(self._max_current)

    def current_sessions(self) -> Dict[str, int]:
        with self._lock:
            return {k: v for k, v in self._current.items() if v}

    def wait_accepted(self, n: int, timeout: float) -> bool:
        """Wait until at least ``n`` messages were accepted; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.accepted_count() < n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    # ------------------------------------------------------------------ lifecycle
    def _factory(self, sink: str):
        def make():
            extra = {}
            if self.tls_context is not None:
                extra.update(tls_context=self.tls_context, require_starttls=False)
            if self.auth is not None:
                # aiosmtpd does not see implicit TLS as TLS: only STARTTLS farms insist on it.
                extra.update(authenticator=self._authenticate, auth_required=True,
                             auth_require_tls=self.implicit_tls is None)
            with warnings.catch_warnings():  # AUTH without STARTTLS is meant: the farm is implicit TLS
                warnings.simplefilter("ignore", UserWarning)
                return _SinkSMTP(self, sink, loop=self._loop, hostname=f"sink-{sink}.test",
                                 ident="mta-test-sink", enable_SMTPUTF8=True, decode_data=False,
                                 timeout=self.idle_timeout, **extra)
        return make

    def _new_loop(self) -> asyncio.AbstractEventLoop:
        if self.use_uvloop:
            try:
                import uvloop
                return uvloop.new_event_loop()
            except ImportError:
                pass
        return asyncio.new_event_loop()

    def start(self, timeout: float = 30.0) -> "SinkFarm":
        if self._thread is not None:
            return self
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        for attempt in range(5):
            ready = threading.Event()
            box: dict = {}
            self._thread = threading.Thread(target=self._run, args=(ready, box),
                                            name=f"sinkfarm-{self.port}", daemon=True)
            self._thread.start()
            if not ready.wait(timeout):
                raise RuntimeError("sink farm did not start")
            if "error" not in box:
                return self
            self._thread.join(10)
            self._thread = None
            if not self._auto_port or attempt == 4:
                raise RuntimeError(f"sink farm could not listen on port {self.port}: "
                                   f"{box['error']}")
            self.port = free_port(self.addresses)
        return self

    def _run(self, ready: threading.Event, box: dict) -> None:
        loop = self._new_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            try:
                for addr in self.addresses:
                    srv = loop.run_until_complete(loop.create_server(
                        self._factory(addr), host=addr, port=self.port, reuse_address=True,
                        backlog=1024, ssl=self.implicit_tls))
                    self._servers.append(srv)
            except Exception as exc:          # port taken on one of the addresses
                box["error"] = exc
                for srv in self._servers:
                    srv.close()
                self._servers = []
                ready.set()
                return
            ready.set()
            loop.run_forever()
            # stop(): close listeners, then every live session
            for srv in self._servers:
                srv.close()
            self._servers = []
            tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in tasks:
                t.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
            self._loop = None

    def _close_sessions(self) -> None:
        for srv in self._servers:
            srv.close()
        for proto in list(self._live):
            if proto.transport is not None:
                proto.transport.abort()
        self._loop.stop()

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._close_sessions)
        self._thread.join(15)
        self._thread = None

    def __enter__(self) -> "SinkFarm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
