"""Operator control over the broker: `mta pause` and `mta resume` reach every MTA process
attached to the same broker (SPEC §5) through the fanout exchange `mta.control`; each
process consumes it with a private, auto-deleted queue.

A pause applies to a recipient domain (`example.com`) or to a destination key
(`provider:google`, `mx:mx1.example.net`): mail for it is held in the delay queues, not
tried and not counted as an attempt, until the pause ends (`--for`) or is lifted.
Pauses live in the memory of the running processes; a process started later does not know
them. At most `MAX_PAUSES` are kept, none longer than `MAX_PAUSE` ahead: whoever may send
commands must not be able to grow a process's memory or pause mail for years.
"""

from __future__ import annotations

import logging
import math
import time

import aio_pika
import orjson

log = logging.getLogger("mta.control")

CONTROL = "mta.control"
PAUSED_HOLD = 15  # seconds between looks at a paused destination's mail
MAX_PAUSES = 10_000  # operator pauses kept at once; far more targets than anyone pauses by hand
MAX_PAUSE = 30 * 86400.0  # seconds: a pause ends at most this far ahead (`mta resume` or a new pause extends)
MAX_TARGET = 1000  # characters of a pause target (domains are at most 253; destination keys list MX hosts)


class Pauses:
    """Which domains or destinations are paused, until when (None: until resumed)."""

    def __init__(self) -> None:
        self._until: dict[str, float | None] = {}

    def apply(self, command: dict, now: float) -> str | None:
        """Apply a control message; returns the name it changed, or None if it was not ours
        or was refused (`refusal` says why; logged)."""
        name = _target(command)
        if not name:
            return None
        if command.get("command") == "pause":
            problem = self.refusal(command, now)
            if problem is not None:
                log.warning("pause %s refused: %s; nothing changed", name[:100], problem)
                return None
            until = command.get("until")
            self._until[name] = float(until) if until is not None else None
            return name
        if command.get("command") == "resume":
            self._until.pop(name, None)
            return name
        return None

    def refusal(self, command: dict, now: float) -> str | None:
        """Why this pause command would be refused (None: it would be applied)."""
        name = _target(command)
        if not name:
            return "no target"
        problem = pause_problem(name, command.get("until"), now)
        if problem is None and name not in self._until and len(self._until) >= MAX_PAUSES:
            self._forget_ended(now)
            if len(self._until) >= MAX_PAUSES:
                problem = f"{MAX_PAUSES} pauses are in force already; resume some first"
        return problem

    def _forget_ended(self, now: float) -> None:
        for name, until in list(self._until.items()):
            if until is not None and until <= now:
                del self._until[name]

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

    def __len__(self) -> int:
        return len(self._until)

    def active(self, now: float) -> dict[str, float | None]:
        """Pauses in force: target -> until (None: until resumed)."""
        return {name: until for name, until in list(self._until.items()) if until is None or until > now}


def _target(command: dict) -> str:
    return str(command.get("target", "")).lower().rstrip(".")


def pause_problem(target: str, until, now: float) -> str | None:
    """Why a pause of `target` until `until` (Unix time, None: until resumed) is refused."""
    if len(target) > MAX_TARGET:
        return f"the target is longer than {MAX_TARGET} characters"
    if until is None:
        return None
    if isinstance(until, bool) or not isinstance(until, (int, float)) or not math.isfinite(until):
        return f"its end {until!r} is not a time"
    if until - now > MAX_PAUSE:
        return f"it would end {(until - now) / 86400:.0f} days from now, more than {MAX_PAUSE / 86400:.0f}"
    return None


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
