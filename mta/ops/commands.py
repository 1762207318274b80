"""Control commands: what the process does with a message of `mta.control` (`mta pause`,
`resume`, `reload`, `status`), once mta.ops.control's gate has admitted it, and the answer
it publishes when asked for one.

Runs on the engine it is given: pauses and resumes its destinations, reloads its rules,
and answers on the publishing connection's channel.
"""

from __future__ import annotations

import logging

from mta.broker import client
from mta.broker.errors import BrokerLost
from mta.ops import control, status
from mta.tls.apply import base_key
from shaper.handoffs import Held

log = logging.getLogger("mta.control")


async def on_control(engine, message, publish_channel) -> None:
    """One control message (aio-pika's: body, headers, ack)."""
    try:
        await _obey(engine, message, publish_channel)
    finally:  # whatever became of it: an unacknowledged one would hold the prefetch window
        try:
            await client.acknowledge(message)
        except BrokerLost as exc:  # the channel closed: the queue went with it
            log.debug("acknowledging a control message failed: %s", exc)



async def _obey(engine, message, publish_channel) -> None:
    now = engine.clock()
    command = engine.control_gate.admit(message.body, message.headers, now)  # refused: counted, None
    if command is None:
        return
    reply_to = engine.control_gate.reply_queue(command, now)
    if command["command"] == "status":  # `mta status` asking
        if reply_to:
            await status.answer(engine, command, publish_channel, reply_to)
        return
    if command["command"] == "reload":
        ok, error = engine.reload(), "the rules file was refused (see the MTA's log)"
    else:
        ok = pause_or_resume(engine, command, now)
        error = None if ok else engine.pauses.refusal(command, now)
    if reply_to:
        await control.answer(publish_channel, reply_to,
                             control.acknowledgement(command, engine.metrics.instance, ok, None if ok else error))



def pause_or_resume(engine, command: dict, now: float) -> bool:
    name = engine.pauses.apply(command, now)
    if name is None:
        if command["command"] == "pause":
            log.warning("pause %s refused: %s; nothing changed", str(command.get("target", ""))[:100],
                        engine.pauses.refusal(command, now))
        return False
    until = command.get("until")
    log.info("%s %s%s", command["command"], name[:100], f" until {until:.0f}" if until else "")
    engine.keep_pause(name, until, command["command"] == "pause")
    if command["command"] == "resume":
        for destination in list(engine.destinations.values()):
            if name in (destination.key, base_key(destination.key)):  # and its TLS policies' own
                destination.resume("operator: mta resume")
        return True
    for destination in engine.destinations.values():
        if name in (destination.key, base_key(destination.key)):
            if until is None or until > now:
                destination.suspend(until, "operator: mta pause")
            continue
        for job in destination.drain():
            if engine.pauses.paused(now, job.domain, destination.key, base_key(destination.key)):
                engine._hold(Held(job, control.PAUSED_HOLD, "paused"))
            else:
                destination.push(job)
    return True
