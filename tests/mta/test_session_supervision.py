"""A broker session's tasks run under one TaskGroup (mta.engine): a settler or sweep that
crashes ends the session, is logged with its traceback and counted, and the next session
settles again; SIGTERM still drains and returns. Over a fake broker (mta.broker.client's
calls replaced), no RabbitMQ."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest

from mta import engine as engine_module
from mta.clock import Clock
from mta.broker import client
from mta.broker.errors import BrokerLost
from mta.config import parse_config
from mta.engine import Engine
from mta.settle.settler import Settler

NOW = 1_800_000_000.0


class FakeLowChannel:
    """aiormq's channel below a consuming one: consumers start and stop."""

    def __init__(self):
        self.is_closed = False
        self.on_consumer_cancel_callbacks: set = set()
        self.consumers: list[str] = []

    async def basic_qos(self, prefetch_count):
        pass

    async def basic_consume(self, queue, callback):
        self.consumers.append(queue)
        return SimpleNamespace(consumer_tag=f"ctag-{queue}")

    async def basic_cancel(self, tag):
        self.consumers.remove(tag.removeprefix("ctag-"))

    async def basic_ack(self, tag, multiple=False, wait=False):
        pass

    async def basic_nack(self, tag, requeue=True, wait=False):
        pass


class FakeChannel:
    def __init__(self):
        self.is_closed = False
        self.close_callbacks: set = set()
        self.channel = FakeLowChannel()


class FakeConnection:
    def __init__(self, broker: "FakeBroker"):
        self.is_closed = False
        self.close_callbacks: set = set()
        self.broker = broker

    async def channel(self, **kwargs):
        channel = FakeChannel()
        self.broker.channels.append(channel)
        return channel

    async def close(self):
        self.is_closed = True


class FakeBroker:
    def __init__(self):
        self.connections: list[FakeConnection] = []
        self.channels: list[FakeChannel] = []

    async def connect(self, url, name=None):
        connection = FakeConnection(self)
        self.connections.append(connection)
        return connection

    @property
    def consuming(self) -> list[str]:
        return [queue for channel in self.channels for queue in channel.channel.consumers]


@pytest.fixture
def broker(monkeypatch):
    fake = FakeBroker()
    monkeypatch.setattr(client, "connect", fake.connect)

    async def consume_control(*args, **kwargs):
        pass

    monkeypatch.setattr(client, "consume_control", consume_control)
    return fake


def an_engine(monkeypatch) -> Engine:
    engine = Engine(parse_config({}), clock=Clock(lambda: NOW))

    async def declare(channel):
        return {}

    monkeypatch.setattr(engine.topology, "declare", declare)
    return engine


async def until(condition, what: str) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never: {what}")


def test_a_settler_that_crashes_ends_the_session_seen_and_counted_and_the_next_settles(broker, monkeypatch, caplog):
    plain = Settler.run
    runs = []

    async def crashes_once(self):
        runs.append(len(broker.connections))
        if len(runs) == 1:
            raise RuntimeError("unforeseen")
        await plain(self)

    monkeypatch.setattr(Settler, "run", crashes_once)
    engine = an_engine(monkeypatch)

    async def scenario():
        stop = asyncio.Event()
        await asyncio.wait_for(engine._session(stop), 5)  # ends by itself: the settler crashed
        first = list(broker.connections)
        session = asyncio.create_task(engine._session(stop))
        await until(lambda: engine.ready.is_set(), "the second session consumes")
        settling = [t for t in asyncio.all_tasks() if t.get_name() == "settler" and not t.done()]
        stop.set()
        await asyncio.wait_for(session, 5)
        return first, settling

    first, settling = asyncio.run(scenario())
    assert all(c.is_closed for c in first)  # the broker gives back what the first session held
    assert engine.crashes == {"settler": 1}
    assert 'mta_task_crashes_total{task="settler"} 1.0' in generate_latest(engine.metrics.registry).decode()
    crash = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(crash) == 1 and "settler crashed (RuntimeError: unforeseen)" in crash[0].getMessage()
    assert crash[0].exc_info is not None and "crashes_once" in caplog.text  # its traceback
    assert runs == [2, 4] and len(settling) == 1  # the second session's settler ran
    assert all(c.is_closed for c in broker.connections)  # (consumers die with their connection)


def test_a_settler_that_returns_ends_the_session_too(broker, monkeypatch):
    async def returns(self):
        return None

    monkeypatch.setattr(Settler, "run", returns)
    engine = an_engine(monkeypatch)
    asyncio.run(asyncio.wait_for(engine._session(asyncio.Event()), 5))
    assert engine.crashes == {"settler": 1}


def test_a_sweep_for_idle_destinations_that_crashes_ends_the_session(broker, monkeypatch):
    monkeypatch.setattr(engine_module, "FORGET_SWEEP", 0)
    engine = an_engine(monkeypatch)

    def broken(now):
        raise KeyError("unforeseen")

    monkeypatch.setattr(engine, "forget_idle", broken)
    asyncio.run(asyncio.wait_for(engine._session(asyncio.Event()), 5))
    assert engine.crashes == {"forget idle": 1}
    assert not engine.ready.is_set() and all(c.is_closed for c in broker.connections)


def test_a_settler_that_lost_its_channel_ends_the_session_without_a_crash(broker, monkeypatch):
    async def lost(self):
        raise BrokerLost("publishing: channel closed")

    monkeypatch.setattr(Settler, "run", lost)
    engine = an_engine(monkeypatch)
    asyncio.run(asyncio.wait_for(engine._session(asyncio.Event()), 5))
    assert engine.crashes == {}
    assert all(c.is_closed for c in broker.connections)


def test_sigterm_drains_and_ends_the_session_without_a_crash(broker, monkeypatch):
    engine = an_engine(monkeypatch)

    async def scenario():
        stop = asyncio.Event()
        session = asyncio.create_task(engine._session(stop))
        await until(lambda: engine.ready.is_set(), "the session consumes")
        consuming = list(broker.consuming)
        stop.set()
        await asyncio.wait_for(session, 5)
        return consuming, [t for t in asyncio.all_tasks() if t.get_name() in ("settler", "forget idle")]

    consuming, left = asyncio.run(scenario())
    assert sorted(consuming) == ["mta.bulk", "mta.single"]
    assert broker.consuming == [] and left == [] and engine.crashes == {}
    assert engine.stopping


def test_a_lost_connection_ends_the_session(broker, monkeypatch):
    engine = an_engine(monkeypatch)

    async def scenario():
        session = asyncio.create_task(engine._session(asyncio.Event()))
        await until(lambda: engine.ready.is_set(), "the session consumes")
        for callback in list(broker.connections[0].close_callbacks):
            callback(broker.connections[0], ConnectionResetError())
        await asyncio.wait_for(session, 5)

    asyncio.run(scenario())
    assert engine.crashes == {} and not engine.stopping
