"""Destination state shared by the nodes: what one node learns, every node knows within a
second (SPEC §6).

Theory of operation: a node that pauses a destination (a pattern's suspend, a dead
destination), throttles it (a pattern's backoff), or learns its limits (a receiver's
"421 too many connections", an adaptive rate) `tell`s the store: the fact goes into the
hash `mta:state` (field: destination key, value: that key's facts by kind, each with its
end as a Unix time) and out on the channel `mta:state`. Every node listens on the channel
and reads the hash when it starts or the store comes back (a message missed while it was
away), and hands each fact of another node to `apply`. Facts end by themselves: a reader
drops the ones whose time is past, and `tell` drops them from the hash as it writes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import orjson

from redis.exceptions import RedisError

from mta.cluster.store import PREFIX, Store, StoreDown

log = logging.getLogger("mta.cluster")

STATE = PREFIX + "state"
WANTED = PREFIX + "wanted"  # channel: a node found every lease of a destination taken
KINDS = ("pause", "throttle", "window", "rate", "route")


class SharedState:
    def __init__(self, store: Store, node: str, apply: Callable[[str, str, dict | None], None],
                 wall: Callable[[], float], sleep: Callable[[float], Awaitable]) -> None:
        self._store = store
        self._sleep = sleep
        self._node = node
        self.apply = apply  # (destination key, kind, fact) of another node
        self._wall = wall
        self._pending: list[tuple[str, str, dict | None]] = []
        self.listening = asyncio.Event()  # subscribed, and what was in force is read
        self.on_wanted: Callable[[str], None] = lambda key: None  # another node waits for a lease of key
        self._asked: set[str] = set()
        self._wake = asyncio.Event()

    def tell(self, key: str, kind: str, fact: dict | None) -> None:
        """This node learned `fact` (None: it ended) of kind `kind` for destination `key`;
        written by `run` without holding up the caller."""
        self._pending.append((key, kind, fact))
        self._wake.set()

    def want(self, key: str) -> None:
        """This node found every lease of `key` taken: the others close an idle session
        of it (an idle session must not keep a connection from a node with mail)."""
        if key not in self._asked:
            self._asked.add(key)
            self._wake.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._writer())
            tasks.create_task(self._listener())

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, self._pending = self._pending, []
            asked, self._asked = self._asked, set()
            if asked:
                pipe = self._store.client.pipeline(transaction=False)
                for key in asked:
                    pipe.publish(WANTED, orjson.dumps({"node": self._node, "key": key}))
                try:
                    await self._store.call(pipe.execute)
                except StoreDown:
                    pass
            for key, kind, fact in pending:
                try:
                    await self._write(key, kind, fact)
                except StoreDown:
                    pass  # another node learns it by itself; this one goes on

    async def _write(self, key: str, kind: str, fact: dict | None) -> None:
        store = self._store
        raw = await store.call(store.client.hget, STATE, key)
        facts = self._live(raw)
        if fact is None:
            facts.pop(kind, None)
        else:
            facts[kind] = fact
        pipe = store.client.pipeline(transaction=False)
        if facts:
            pipe.hset(STATE, key, orjson.dumps(facts))
        else:
            pipe.hdel(STATE, key)
        pipe.publish(STATE, orjson.dumps({"node": self._node, "key": key, "kind": kind, "fact": fact}))
        await store.call(pipe.execute)

    def _live(self, raw: bytes | None) -> dict:
        try:
            facts = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            return {}
        now = self._wall()
        if not isinstance(facts, dict):
            return {}
        return {k: f for k, f in facts.items() if k in KINDS and _live(f, now)}

    async def load(self) -> None:
        """Every fact in force, from the hash (at start, and after the store came back)."""
        raw = await self._store.call(self._store.client.hgetall, STATE)
        for key, value in raw.items():
            for kind, fact in self._live(value).items():
                try:
                    self.apply(key.decode(), kind, fact)
                except (ValueError, KeyError, TypeError, AttributeError) as exc:  # no node of ours wrote it
                    log.warning("a shared %s fact was ignored (%s): %r", kind, exc, key[:100])

    async def _listener(self) -> None:
        """Listen on the channel; while the store is away, try again every second and read
        the hash once it answers."""
        while True:
            pubsub = self._store.client.pubsub()
            try:
                await pubsub.subscribe(STATE, WANTED)
                await self.load()
                self.listening.set()
                generation = self._store.generation
                # the store went away and came back (maybe another one, after a failover):
                # a subscription on a dead connection hears nothing, so subscribe again
                while generation == self._store.generation:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._heard(message["channel"], message["data"])
            except (StoreDown, RedisError, OSError) as exc:
                log.debug("listening for shared state stopped (%s); again in 1 s", exc)
            finally:
                self.listening.clear()
                try:
                    await pubsub.aclose()
                except (RedisError, OSError):
                    pass
            await self._sleep(1.0)

    def _heard(self, channel: bytes, data: bytes) -> None:
        try:
            doc = orjson.loads(data)
            if doc["node"] == self._node:
                return
            if channel == WANTED.encode():
                self.on_wanted(str(doc["key"]))
                return
            if doc["kind"] not in KINDS:
                return
            fact = doc["fact"]
            if fact is not None and not _live(fact, self._wall()):
                return
            self.apply(str(doc["key"]), doc["kind"], fact)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # a message no node of ours wrote
            log.warning("a shared state message was ignored (%s): %r", exc, data[:200])


def _live(fact, now: float) -> bool:
    """A fact as nodes write them (a mapping with a numeric end), not yet over."""
    until = fact.get("until") if isinstance(fact, dict) else None
    return isinstance(until, (int, float)) and not isinstance(until, bool) and until > now
