"""How a process answers control commands (Engine._on_control with fakes, no broker): on
the publishing connection's channel, never on the consuming channel the command came in on,
and only to `amq.gen-*` queues; pause, resume and reload are acknowledged with their fate."""

import asyncio

import orjson

from mta.clock import Clock
from mta.ops import control
from mta.config import parse_config
from mta.engine import Engine

NOW = 1_800_000_000.0


class ConsumingChannel:
    def basic_publish(self, *args, **kwargs):
        raise AssertionError("an answer was published on the consuming connection")


class Incoming:
    """What aio-pika hands the control consumer."""

    def __init__(self, doc: dict, headers: dict | None = None):
        self.body = orjson.dumps(doc)
        self.headers = headers or {}
        self.channel = ConsumingChannel()
        self.acked = 0

    async def ack(self):
        self.acked += 1


class PublishingChannel:
    def __init__(self):
        self.published: list[tuple[str, dict]] = []

    async def basic_publish(self, body, *, exchange, routing_key, properties, timeout):
        self.published.append((routing_key, orjson.loads(body)))


def control_round(engine: Engine, *docs: dict) -> list[tuple[str, dict]]:
    channel = PublishingChannel()

    async def run():
        for doc in docs:
            await engine._on_control(Incoming(doc), channel)

    asyncio.run(run())
    return channel.published


def test_answers_go_out_on_the_publishing_channel_and_only_to_server_named_queues():
    engine = Engine(parse_config({}), clock=Clock(lambda: NOW))
    published = control_round(engine,
                              {"command": "status", "id": "s1", "reply_to": "amq.gen-abc"},
                              {"command": "status", "id": "s2", "reply_to": "mta.single"},
                              {"command": "pause", "id": "p1", "target": "ok2.test", "reply_to": "mta.bulk"},
                              {"command": "pause", "id": "p2", "target": "ok3.test", "until": NOW + 600,
                               "reply_to": "amq.gen-abc"},
                              {"command": "pause", "id": "p3", "target": "ok4.test", "until": NOW + 31 * 86400,
                               "reply_to": "amq.gen-abc"},
                              {"command": "resume", "id": "r1", "target": "ok2.test", "reply_to": "amq.gen-abc"},
                              {"command": "reload", "id": "l1", "reply_to": "amq.gen-abc"})
    assert [queue for queue, _ in published] == ["amq.gen-abc"] * 5
    status, *acks = [doc for _, doc in published]
    assert status["request"] == "s1" and status["instance"] == engine.metrics.instance
    assert [(a["request"], a["command"], a["ok"]) for a in acks] == [
        ("p2", "pause", True), ("p3", "pause", False), ("r1", "resume", True), ("l1", "reload", False)]
    assert "more than 30" in acks[1]["error"]
    assert "rules file was refused" in acks[3]["error"]  # this engine has no file to re-read
    assert set(engine.pauses.active(NOW)) == {"ok3.test"}  # ok2.test paused (no answer), then resumed
    assert engine.control_gate.refused["reply_to"] == 2


def test_with_a_key_an_unsigned_command_changes_nothing_and_gets_no_answer(monkeypatch):
    monkeypatch.setenv("MTA_CONTROL_KEY", "k")
    engine = Engine(parse_config({"control": {"key_env": "MTA_CONTROL_KEY"}}), clock=Clock(lambda: NOW))
    published = control_round(engine, {"command": "pause", "id": "p1", "sent": NOW, "target": "ok2.test",
                                       "reply_to": "amq.gen-abc"})
    assert published == [] and not engine.pauses and engine.control_gate.refused["unsigned"] == 1


def test_a_resume_whose_end_is_no_time_is_refused_and_the_pause_stays():
    engine = Engine(parse_config({}), clock=Clock(lambda: NOW))
    published = control_round(engine,
                              {"command": "pause", "id": "p1", "target": "ok2.test"},
                              {"command": "resume", "id": "r1", "target": "ok2.test", "until": "soon",
                               "reply_to": "amq.gen-abc"})
    assert published == []
    assert set(engine.pauses.active(NOW)) == {"ok2.test"}
    assert engine.control_gate.refused["malformed"] == 1
    control_round(engine, {"command": "resume", "id": "r2", "target": "ok2.test"})
    assert not engine.pauses.active(NOW)


def test_every_control_message_is_acknowledged_whatever_became_of_it():
    # the control consumer has a prefetch window: one left unacknowledged would hold it
    engine = Engine(parse_config({}), clock=Clock(lambda: NOW))
    messages = [Incoming({"command": "pause", "id": "p1", "target": "ok2.test"}),
                Incoming({"command": "explode"}),
                Incoming({"command": "resume", "id": "r1", "target": "ok2.test", "until": [1]}),
                Incoming({"command": "status", "id": "s1", "reply_to": "amq.gen-abc"})]
    channel = PublishingChannel()

    async def run():
        for message in messages:
            await engine._on_control(message, channel)

    asyncio.run(run())
    assert [m.acked for m in messages] == [1, 1, 1, 1]


def test_a_huge_resume_target_is_not_logged_whole(caplog):
    caplog.set_level("INFO")
    engine = Engine(parse_config({}), clock=Clock(lambda: NOW))
    control_round(engine, {"command": "resume", "id": "r1", "target": "x" * 50_000})
    assert caplog.records and max(len(r.getMessage()) for r in caplog.records) < 1000
