"""Quarantine: messages the broker dead-lettered after too many redeliveries.

A message that crashed the MTA `broker.delivery_limit` times in a row lands in
`mta.quarantine` (the lanes' quorum `x-delivery-limit`), where it stops hurting the
process. `mta replay-quarantined` puts each one back on the lane it came from, once the cause
is fixed. Moves are publish-confirmed before the quarantined copy is acknowledged.
"""

from __future__ import annotations

import aio_pika

from mta.config import Config
from mta.broker.topology import QUARANTINE, Topology


def origin_lane(headers: dict) -> str:
    """The lane a dead-lettered message came from, per its x-death header."""
    for death in headers.get("x-death") or ():
        queue = death.get("queue", "")
        if isinstance(queue, bytes):
            queue = queue.decode()
        if queue.startswith("mta.") and queue[4:] in ("single", "bulk"):
            return queue[4:]
    return "bulk"


async def replay_quarantined(config: Config, limit: int = 0) -> int:
    connection = await aio_pika.connect(config.broker.url, timeout=10)
    moved = 0
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchanges = await Topology(config.broker.queue_type, config.broker.delivery_limit).declare(channel)
        queue = await channel.get_queue(QUARANTINE, ensure=False)
        while limit <= 0 or moved < limit:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            headers = {k: v for k, v in (message.headers or {}).items() if k != "x-death"}
            copy = aio_pika.Message(message.body, headers=headers, content_type=message.content_type,
                                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await exchanges["mta"].publish(copy, routing_key=origin_lane(message.headers or {}), timeout=30)
            await message.ack()
            moved += 1
    return moved
