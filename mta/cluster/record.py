"""The record of final outcomes, shared: a message redelivered to any node after another
node crashed gets its result, not a second delivery (SPEC §6).

Theory of operation: it stands where the settler's journal stands (`final`, `published`)
and passes every call on to the local journal, if there is one; besides, it buffers the
outcome and writes the buffer to the store in one call every `FLUSH_EVERY` (a hash per
hour, `mta:final:HOUR`, field = the message's recent key, value `F<status>\\0<result>` or,
once the result is confirmed, `P`), kept `KEEP_HOURS`. The settler waits for a flush before
it acknowledges a batch (`Settler.before_ack`): a delivery acknowledged is on record; one a
node had on the wire when it died may be sent again, as without the store. `recall` (only for a redelivered
copy that this node does not know) looks through the hours, newest first.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable

from mta.cluster.store import PREFIX, Store, StoreDown

log = logging.getLogger("mta.cluster")

FLUSH_EVERY = 0.05  # seconds
KEEP_HOURS = 25  # longer than any redelivery: RabbitMQ's consumer_timeout is 30 min by default
MAX_BUFFER = 100_000  # outcomes kept for the store while it is down; newer ones are not
CHUNK = 1_000  # outcomes per call


class SharedRecord:
    def __init__(self, store: Store, journal, wall: Callable[[], float]) -> None:
        self._store = store
        self.journal = journal  # the local one (mta.settle.journal), or None
        self._wall = wall
        self._buffer: dict[str, dict[str, bytes]] = {}  # hour key -> field -> value
        self._count = 0  # outcomes in the buffer
        self._dropping = False
        self._wake = asyncio.Event()

    def _hour(self) -> str:
        return f"{PREFIX}final:{int(self._wall() // 3600)}"

    def final(self, key: str, status: str, body: bytes) -> int | None:
        self._put(key, b"F" + status.encode() + b"\0" + body)
        return None if self.journal is None else self.journal.final(key, status, body)

    def published(self, key: str, mark: int | None = None) -> None:
        if self.journal is not None:
            self.journal.published(key, mark)
        self._put(key, b"P")

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()

    def _put(self, key: str, value: bytes) -> None:
        fields = self._buffer.setdefault(self._hour(), {})
        if key not in fields:
            if self._count >= MAX_BUFFER:
                if not self._dropping:
                    self._dropping = True
                    log.warning("the cluster store has not taken the last %d outcomes; newer ones are "
                                "kept only in the local journal until it does", MAX_BUFFER)
                return
            self._count += 1
        fields[key] = value
        self._wake.set()

    async def run(self, sleep: Callable[[float], object]) -> None:
        """Write the buffer every FLUSH_EVERY; keep it while the store does not answer."""
        while True:
            await self._wake.wait()
            await sleep(FLUSH_EVERY)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write what is in the buffer now (not what comes in meanwhile: the settler waits for
        this before acknowledging a batch), `CHUNK` outcomes per call, so a backlog after an
        outage is not one call that cannot finish within the store's timeout; what fails is
        put back for the next flush, under what was written since."""
        buffer, self._buffer, self._count = self._buffer, {}, 0
        pending = [(hour, fields) for hour, fields in buffer.items()]
        while pending:
            hour, fields = pending[0]
            chunk = dict(itertools.islice(fields.items(), CHUNK))
            pipe = self._store.client.pipeline(transaction=False)
            pipe.hset(hour, mapping=chunk)
            pipe.expire(hour, KEEP_HOURS * 3600)
            try:
                await self._store.call(pipe.execute)
            except StoreDown:
                for hour, fields in pending:
                    newer = self._buffer.get(hour, {})
                    self._count += len(fields.keys() - newer.keys())
                    self._buffer[hour] = {**fields, **newer}
                return
            for key in chunk:
                del fields[key]
            if not fields:
                pending.pop(0)
        self._dropping = False

    async def recall(self, key: str) -> tuple[bytes | None, str, bool] | None:
        """(result, status, published) of a message some node finished, or None (also when
        the store does not answer: the copy is then sent, as without the store)."""
        hour = int(self._wall() // 3600)
        pipe = self._store.client.pipeline(transaction=False)
        for h in range(hour, hour - KEEP_HOURS - 1, -1):
            pipe.hget(f"{PREFIX}final:{h}", key)
        try:
            found = await self._store.call(pipe.execute)
        except StoreDown:
            return None
        for value in found:
            if value:
                if value[:1] == b"P":
                    return None, "", True
                status, _, body = value[1:].partition(b"\0")
                return body, status.decode(), False
        return None
