"""Operator control over the broker: `mta pause` and `mta resume` reach every MTA process
attached to the same broker (SPEC §5) through the fanout exchange `mta.control`; each
process consumes it with a private, auto-deleted queue.

A pause applies to a recipient domain (`example.com`) or to a destination key
(`provider:google`, `mx:mx1.example.net`): mail for it is held in the delay queues, not
tried and not counted as an attempt, until the pause ends (`--for`) or is lifted.
Pauses live in the memory of the running processes; a process started later does not know
them.
"""

from __future__ import annotations

import time

import aio_pika
import orjson

CONTROL = "mta.control"
PAUSED_HOLD = 15  # seconds between looks at a paused destination's mail


class Pauses:
    """Which domains or destinations are paused, until when (None: until resumed)."""

    def __init__(self) -> None:
        self._until: dict[str, float | None] = {}

    def apply(self, command: dict, now: float) -> str | None:
        """Apply a control message; returns the name it changed, or None if it was not ours."""
        name = str(command.get("target", "")).lower().rstrip(".")
        if not name:
            return None
        if command.get("command") == "pause":
            until = command.get("until")
            self._until[name] = float(until) if until is not None else None
            return name
        if command.get("command") == "resume":
            self._until.pop(name, None)
            return name
        return None

    def paused(self, now: float, *names: str) -> bool:
        for name in names:
            if name in self._until:
                until = self._until[name]
                if until is None or until > now:
                    return True
                del self._until[name]
        return False

    def __bool__(self) -> bool:
        return bool(self._until)

    def active(self, now: float) -> dict[str, float | None]:
        """Pauses in force: target -> until (None: until resumed)."""
        return {name: until for name, until in list(self._until.items()) if until is None or until > now}


async def declare(channel) -> aio_pika.abc.AbstractExchange:
    return await channel.declare_exchange(CONTROL, aio_pika.ExchangeType.FANOUT, durable=True)


async def send(url: str, command: str, target: str, seconds: float | None = None) -> None:
    """Publish one control message (confirmed) for every running MTA."""
    body = {"command": command, "target": target.lower(), "sent": time.time()}
    if seconds is not None:
        body["until"] = time.time() + seconds
    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await declare(channel)
        await exchange.publish(aio_pika.Message(orjson.dumps(body), content_type="application/json"),
                               routing_key="", timeout=30)
