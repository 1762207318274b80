"""Fakes shared by the shell's unit tests, each standing in for one real interface.

`FakeClock` is mta.clock.Clock on virtual time: the monotonic time is a number that moves
only when a test says so (`advance`), or, with `run`, whenever every task
is waiting for it (trio's autojump clock). Timers and sleeps fire in time order as it moves:
minutes of pacing, idle timeouts and probing run in milliseconds, and each sleep asked for
is recorded in `sleeps`. The wall time moves with it, `wall_offset` apart (``wall`` given:
that far; else none), and a test sets the system clock by changing `wall_offset`.
tests/mta/test_fakes.py holds it to the real clock's interface.

`FakeConnector` opens `FakeSession`s (mta.smtp.connector.Connector, mta.smtp.session.Session)
to a receiver that accepts every message, or refuses or swallows every connection (`mode`);
two events hold connecting (`connecting`) and the receiver's answers (`answering`) while a
test looks. `FakePublishChannel` is the part of an aiormq channel that confirmed publishes
use (mta.broker.publish): its "broker" numbers the publishes as RabbitMQ does and confirms
them at once, or when the test says (`answer`); `FakeConsumeChannel` records what a
consuming lane (mta.broker.client.Consuming) was told to acknowledge or give back.

`FakeDestination` is what `mta status` and the metrics read of a destination
(mta.destinations.delivery.Destination): its name, a domain it serves, its MX answer and
its snapshot (shaper.statistics), which a test writes as it likes (`snapshot`).
`FakeEngine` is what they read of the engine (mta.engine.Engine): its counts, rules,
pauses, routes, budget, control gate and destinations, without a broker or a loop.
tests/mta/test_fakes.py holds each method of the other fakes to the real class's.
"""

from __future__ import annotations

from types import SimpleNamespace

import asyncio
import heapq
import itertools
import struct
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aiormq.exceptions import DeliveryError
from pamqp import commands as spec
from pamqp.decode import field_table

from mta.config import parse_config
from mta.destinations.budget import Budget
from mta.ops import control
from mta.ops.replies import LastReplies
from mta.ops.metrics import Metrics
from mta.routing.routes import RouteTable
from mta.routing.rules import Rules
from mta.smtp.client import Reply, SessionFailed
from shaper.statistics import Statistics


class FakeTimer:
    """What `call_at` returns: cancel() stops it, as asyncio.TimerHandle's does."""

    __slots__ = ("when", "callback", "args", "cancelled")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    def __init__(self, start: float = 1_000_000.0, wall: float | None = None) -> None:
        self.t = start
        self.wall_offset = 0.0 if wall is None else wall - start  # wall time less monotonic time
        self.sleeps: list[float] = []
        self._timers: list[tuple[float, int, FakeTimer]] = []
        self._order = itertools.count()

    # ---- mta.clock.Clock

    def wall(self) -> float:
        return self.t + self.wall_offset

    def now(self) -> float:
        return self.t

    def now_reader(self) -> Callable[[], float]:
        return self.now

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> FakeTimer:
        timer = FakeTimer(when, callback, args)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await self.sleep_until(self.t + seconds)

    async def sleep_until(self, when: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self.call_at(when, _wake, future)
        await future

    # ---- moving time

    def advance(self, seconds: float) -> None:
        """Move `seconds` on, running each timer due on the way at its own time."""
        end = self.t + seconds
        while self._timers and self._timers[0][0] <= end:
            when, _, timer = heapq.heappop(self._timers)
            self.t = max(self.t, when)
            if not timer.cancelled:
                timer.callback(*timer.args)
        self.t = end

    def next_timer(self) -> float | None:
        """When the next live timer is due (None: none is)."""
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    async def run(self, done: Callable[[], bool], settle: int = 20) -> None:
        """Until `done()`: let every task run until all wait (`settle` turns of the loop),
        then jump to the next timer and fire it."""
        while not done():
            for _ in range(settle):
                await asyncio.sleep(0)
            if done():
                return
            due = self.next_timer()
            if due is None:
                raise AssertionError("nothing left to wait for, and not done")
            self.advance(max(0.0, due - self.t))


def _wake(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def snapshot(**fields: Any) -> Statistics:
    """A destination's snapshot: an idle one in normal mode, but for ``fields``."""
    idle = dict(mode="normal", reason="", since=0.0, until=None, single=0, bulk=0, unpaced=0, held=0,
                per_second=1.0, connection_limit=10, connections_allowed=3, workers=0,
                unreachable_since=None, waits="")
    return Statistics(**{**idle, **fields})


class FakeDestination:
    """A destination as `mta status` and the metrics see it; ``stats`` is what its
    `statistics()` says."""

    def __init__(self, key: str, stats: Statistics | None = None, *, domain: str = "", answer: Any = None) -> None:
        self.key = key
        self.domain = domain
        self.answer = answer
        self.stats = stats if stats is not None else snapshot()

    def statistics(self) -> Statistics:
        return self.stats


class FakeResolver:
    """The MX cache's counters (mta.routing.mx)."""

    lookups = 0
    cache_hits = 0


class FakeEngine:
    """The engine as `mta status` and the metrics read it, on the rules of ``config`` and
    the wall time ``clock``; ``promote_after``: outcomes before a destination gets its own
    label in the metrics."""

    def __init__(self, config: Any = None, *, clock: Callable[[], float] = lambda: 1_800_000_000.0,
                 promote_after: int = 1) -> None:
        self.config = config if config is not None else parse_config({})
        self.rules = Rules(self.config)
        self.clock = clock
        self.counts: dict[str, int] = {"consumed": 0, "invalid": 0}
        self.crashes: dict[str, int] = {}
        self.resolver = FakeResolver()
        self.destinations: dict[str, Any] = {}
        self.pauses = control.Pauses()
        self.routes = RouteTable(self.config.routes, self.rules, self.pauses, clock, environ={})
        self.budget = Budget(10)
        self.control_gate = control.Gate(None)
        self.cluster = None  # one process alone (mta.cluster)
        self.listeners = None  # no SMTP submission (mta.submission)
        self.tracking = None  # no event store (mta.tracking)
        self.outcomes = SimpleNamespace(replies=LastReplies())  # what `mta status DESTINATION` reads of them
        self.metrics = Metrics(self, clock=clock, promote_after=promote_after)


# ---- SMTP


class FakeSession:
    """A session with a receiver that answers every message "250 2.0.0 ok", one
    transaction at a time (no pipelining)."""

    def __init__(self, connector: FakeConnector, mx: str, ip: str) -> None:
        self.connector = connector
        self.mx, self.ip = mx, ip
        self.cipher = None  # plaintext, as Session's without TLS
        self.usable = True
        self.pipelining = False
        self.closed = False
        self._recipient: str | None = None

    def commands(self, sender: str, recipient: str, data: bytes, *, utf8: bool, eight_bit: bool) -> tuple[bytes, bytes]:
        self._recipient = recipient
        return b"MAIL FROM:<%s>\r\n" % sender.encode(), b"RCPT TO:<%s>\r\n" % recipient.encode()

    async def begin(self, commands: tuple[bytes, bytes] | None) -> Reply | None:
        await self.connector.answering.wait()
        await asyncio.sleep(0)
        return None  # the receiver waits for the content

    async def finish(self, data: bytes, ahead: tuple[bytes, bytes] | None = None) -> Reply:
        if self.connector.hang_data:
            await asyncio.Event().wait()  # the receiver never answers the dot
        self.connector.sent.append((self.mx, self._recipient))
        return Reply(250, "2.0.0 ok", "message")

    def stamp(self, reply: Reply) -> Reply:
        return reply

    def unread_dot(self) -> Reply | None:
        # with `dot_unread`, the receiver's reply to the dot has arrived and waits to be read
        return Reply(250, "2.0.0 ok", "message") if self.connector.dot_unread else None

    async def close(self) -> None:
        await asyncio.sleep(0)
        self.closed = True
        self.connector.open_now -= 1


class FakeConnector:
    """``mode`` "ok": sessions that work; "refuse": every connection fails at once;
    "blackhole": each takes its whole connect timeout. Records every (host, address) tried,
    the sessions opened (``session``: the class of them), how many are open at once, and
    what was sent (host, recipient)."""

    session: type[FakeSession] = FakeSession

    def __init__(self, mode: str = "ok", *, hang_data: bool = False, dot_unread: bool = False) -> None:
        self.mode = mode
        self.hang_data = hang_data
        self.dot_unread = dot_unread
        self.tried: list[tuple[str, str]] = []
        self.connect_timeouts: list[float] = []  # what each open was given
        self.sessions: list[FakeSession] = []
        self.sent: list[tuple[str, str | None]] = []
        self.open_now = 0
        self.peak = 0
        self.connecting = asyncio.Event()  # clear: connections hang until it is set
        self.connecting.set()
        self.answering = asyncio.Event()  # clear: transactions hang until it is set
        self.answering.set()

    @property
    def opened(self) -> list[str]:
        return [session.mx for session in self.sessions]

    async def open(self, mx: str, ip: str, port: int, *, tls: str, timeouts: Any, **options: Any) -> FakeSession:
        self.tried.append((mx, ip))
        self.connect_timeouts.append(timeouts.connect)
        await self.connecting.wait()
        if self.mode == "refuse":
            raise SessionFailed(Reply(None, "connection refused", "connect"))
        if self.mode == "blackhole":
            await asyncio.sleep(timeouts.connect)
            raise SessionFailed(Reply(None, "timed out", "connect"))
        self.open_now += 1
        self.peak = max(self.peak, self.open_now)
        session = self.session(self, mx, ip)
        self.sessions.append(session)
        return session


# ---- the broker


class FakeConsumeChannel:
    """A consuming lane (mta.broker.client.Consuming): records acknowledgements (tag,
    multiple) and the deliveries given back (`requeued`)."""

    def __init__(self) -> None:
        self.is_closed = False
        self.acked: list[tuple[int, bool]] = []
        self.requeued: list[int] = []

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = False) -> None:
        self.acked.append((tag, multiple))

    async def basic_nack(self, tag: int, requeue: bool = True, wait: bool = False) -> None:
        assert requeue, "a delivery is only ever given back to its queue"
        self.requeued.append(tag)

    def acked_tags(self, received) -> set:
        """Which of the ``received`` tags the acknowledgements cover."""
        out = set()
        for tag, multiple in self.acked:
            out |= {t for t in received if t <= tag} if multiple else {tag}
        return out


class FakePublishChannel:
    """An aiormq channel as mta.broker.publish.BatchPublisher uses it. The "broker" numbers
    publishes as they arrive (1, 2, 3, ...), as RabbitMQ does, and records each in
    `published` (exchange, routing key, headers, body). By default it confirms each
    written batch at once: Nack for routing keys in ``refuse``, else Ack. With
    ``by_hand``, written frames wait in `write_queue` (bounded by ``queue_size``) until
    `drain()`, and the test confirms each publish by the broker's number (`answer`). With
    ``record=False`` it only counts the octets written and acknowledges everything at once
    (a benchmark measures the publisher, not the fake)."""

    def __init__(self, *, refuse: tuple = (), by_hand: bool = False, queue_size: int = 0, record: bool = True) -> None:
        self.is_closed = False
        self.lock = asyncio.Lock()
        self.number = 1
        self.max_content_size = 131_072 - 8
        self.confirmations: OrderedDict = OrderedDict()
        self.message_id_delivery_tag: dict = {}
        self.delivery_tag = 0
        self.refuse = set(refuse)
        self.record = record
        self.written = 0  # octets
        self.published: list[dict] = []  # per publish: exchange, routing_key, headers, header_size, body
        self.write_queue: Any = asyncio.Queue(queue_size) if by_hand else _AtOnce(self)

    def create_future(self) -> asyncio.Future:
        return asyncio.get_running_loop().create_future()

    def drain(self) -> None:
        """(``by_hand``) The writer: frames reach the broker, which numbers each publish."""
        while not self.write_queue.empty():
            self._parse(self.write_queue.get_nowait().payload)

    def answer(self, number: int, ack: bool = True) -> None:
        """aiormq's reader on a Basic.Ack / Basic.Nack for the broker's ``number``."""
        frame = spec.Basic.Ack(number) if ack else spec.Basic.Nack(number)
        slot = self.confirmations.pop(number)
        if ack:
            slot.set_result(frame)
        else:
            slot.set_exception(DeliveryError(None, frame))

    def _written(self, payload: bytes) -> None:
        self.written += len(payload)
        if not self.record:
            asyncio.get_running_loop().call_soon(self._ack_all)
            return
        first = len(self.published)
        self._parse(payload)
        asyncio.get_running_loop().call_soon(self._answer_from, first)

    def _answer_from(self, first: int) -> None:
        for number in range(first + 1, len(self.published) + 1):
            self.answer(number, ack=self.published[number - 1]["routing_key"] not in self.refuse)

    def _ack_all(self) -> None:
        ack = spec.Basic.Ack(self.delivery_tag, multiple=True)
        confirmations, self.confirmations = self.confirmations, OrderedDict()
        for slot in confirmations.values():
            slot.set_result(ack)

    def _parse(self, payload: bytes) -> None:
        offset = 0
        while offset < len(payload):
            kind, _, size = struct.unpack_from(">BHI", payload, offset)
            frame = payload[offset + 7:offset + 7 + size]
            offset += 8 + size
            if kind == 1 and frame[:4] == b"\x00\x3c\x00\x28":  # Basic.Publish
                n = frame[6]
                key_length = frame[7 + n]
                self.published.append({"exchange": frame[7:7 + n].decode(), "headers": None, "body": b"",
                                       "routing_key": frame[8 + n:8 + n + key_length].decode()})
            elif kind == 2:
                flags = struct.unpack_from(">H", frame, 12)[0]
                headers = None
                if flags & (1 << 13):
                    at = 14 + 1 + frame[14]  # after the content type
                    headers = field_table(frame[at:])[1]
                self.published[-1]["headers"] = headers
                self.published[-1]["header_size"] = size
            elif kind == 3:
                self.published[-1]["body"] += frame


class _AtOnce:
    """The channel's write queue when the broker answers at once (asyncio.Queue's put)."""

    def __init__(self, channel: FakePublishChannel) -> None:
        self.channel = channel

    async def put(self, item: Any) -> None:
        self.channel._written(item.payload)

    def put_nowait(self, item: Any) -> None:
        self.channel._written(item.payload)
