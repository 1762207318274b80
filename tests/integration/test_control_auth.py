"""The control exchange is not an open door. With `control.key_env` set, a forged unsigned
or badly signed pause is ignored and counted (`mta_control_refused_total`) while `mta pause`
signs its command and works, and a captured signed command cannot be replayed. Without a
key the MTA says at start that the exchange is unauthenticated, and `mta status` answers
only to server-named reply queues (`amq.gen-*`), never into a queue such as `mta.single`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid

import aio_pika
import orjson
import pytest

from mta.ops import control
from tests.testbed.amqp import ResultCollector, make_message, publish, queue_info
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.util import free_port, wait_for

KEY = "control-key-for-this-test"


def mta_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mta", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def refused(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("mta_control_refused_total{"):
            labels, value = line.rsplit(" ", 1)
            out[labels.split('"')[1]] = float(value)
    return out


def status(config: str, env: dict | None = None) -> dict:
    done = mta_cli("status", "--json", "--config", config, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def paused_targets(report: dict) -> set[str]:
    return {d["destination"] for m in report["mtas"] for d in m["destinations"] if d["state"] == "paused"}


async def _forge(url: str, bodies_and_headers: list[tuple[bytes, dict | None]]) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await control.declare(channel)
        for body, headers in bodies_and_headers:
            await exchange.publish(aio_pika.Message(body, headers=headers), routing_key="")


def forge(url: str, *bodies_and_headers: tuple[bytes, dict | None]) -> None:
    asyncio.run(_forge(url, list(bodies_and_headers)))


def fresh(command: str, **fields) -> bytes:
    return orjson.dumps({"command": command, "id": uuid.uuid4().hex, "sent": time.time(), **fields})


async def _spy(url: str) -> None:
    """A queue of the test's own on the control exchange: it keeps a copy of every command."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("spy.control")
        await queue.bind(await control.declare(channel))


async def _spied(url: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("spy.control", passive=True)
        out = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            out.append((message.body, dict(message.headers)))
        return out


@pytest.mark.timeout(180)
def test_forged_pause_is_ignored_and_counted_signed_pause_works(vhost, sinks, mta_config, start_mta):
    port = free_port()
    env = {"MTA_CONTROL_KEY": KEY}
    config = mta_config(control={"key_env": "MTA_CONTROL_KEY"}, metrics={"port": port, "address": "127.0.0.1"})
    mta = start_mta(config, env=env)
    wait_for(lambda: "consuming" in mta.log_text(), 30, what="the MTA consuming")
    assert "unauthenticated" not in mta.log_text()
    asyncio.run(_spy(vhost))

    # Forged: no signature, a signature made with another key, a signed but stale command.
    stale = fresh("pause", target="ok2.test")
    stale_doc = orjson.loads(stale)
    stale_doc["sent"] -= 3600
    stale = orjson.dumps(stale_doc)
    forge(vhost, (fresh("pause", target="ok2.test"), None),
          (fresh("pause", target="ok2.test"), {control.SIGNATURE: control.sign(b"wrong key", b"x")}),
          (stale, {control.SIGNATURE: control.sign(KEY.encode(), stale)}))
    report = status(config, env)  # signed; answered after the forged commands (one queue, in order)
    assert len(report["mtas"]) == 1
    assert "ok2.test" not in paused_targets(report)
    counts = refused(port)
    assert (counts["unsigned"], counts["bad_signature"], counts["stale"]) == (1, 1, 1), counts
    assert "ignored a control message (unsigned)" in mta.log_text()

    run = run_id()
    flowing = {f"f-{run}-{i}": f"user{i}-{run}@ok2.test" for i in range(3)}
    publish(vhost, "bulk", [make_message(i, r) for i, r in flowing.items()])
    collector = ResultCollector(vhost)
    collector.collect(flowing, timeout=60, settle=0.2)
    assert_each_final(collector.by_id, flowing, "delivered")

    # The operator's command, signed with the key of the same rules file, works.
    done = mta_cli("pause", "ok2.test", "--config", config, env=env)
    assert done.returncode == 0, done.stderr
    assert "pause ok2.test: acknowledged by 1 MTA(s) of 1" in done.stdout
    assert "ok2.test" in paused_targets(status(config, env))
    done = mta_cli("resume", "ok2.test", "--config", config, env=env)
    assert done.returncode == 0, done.stderr
    assert "ok2.test" not in paused_targets(status(config, env))

    # A captured signed pause, published again within its minute, is a replay.
    captured = [(body, headers) for body, headers in asyncio.run(_spied(vhost))
                if orjson.loads(body)["command"] == "pause" and "reply_to" in orjson.loads(body)]  # the CLI's
    assert len(captured) == 1
    forge(vhost, captured[0])
    assert "ok2.test" not in paused_targets(status(config, env))
    assert refused(port)["replayed"] == 1

    # Without the key (no rules file), the command reaches the MTA but nobody obeys it.
    done = mta_cli("pause", "ok3.test", "--wait", "2", env={"MTA_BROKER_URL": vhost})
    assert done.returncode == 1
    assert "no MTA acknowledged it" in done.stderr and "require signed commands" in done.stderr
    assert refused(port)["unsigned"] == 2
    assert paused_targets(status(config, env)) == set()


async def _declare(url: str, name: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(name)


@pytest.mark.timeout(120)
def test_status_answers_only_to_server_named_queues(vhost, sinks, mta_config, start_mta):
    port = free_port()
    config = mta_config(metrics={"port": port, "address": "127.0.0.1"})
    mta = start_mta(config)
    wait_for(lambda: "consuming" in mta.log_text(), 30, what="the MTA consuming")
    assert "the control exchange mta.control is unauthenticated" in mta.log_text()
    asyncio.run(_declare(vhost, "someone.else"))

    forge(vhost, (fresh("status", reply_to="mta.single"), None),
          (fresh("status", reply_to="someone.else"), None))
    report = status(config)  # answered on the same channel after those two: they would be routed by now
    assert len(report["mtas"]) == 1
    assert queue_info(vhost, "someone.else")["messages"] == 0
    assert refused(port)["reply_to"] == 2
    assert report["mtas"][0]["counts"]["consumed"] == 0
    assert queue_info(vhost, "mta.invalid")["messages"] == 0
