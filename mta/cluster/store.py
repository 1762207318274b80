"""The connection to the shared store and whether it answers.

Theory of operation: one redis-py asyncio client with a small pool, no retries of its own
and a short timeout on connecting and on every reply: a call that fails or takes longer
marks the store down and raises `StoreDown` at once, so callers fall back to their share
instead of waiting (an error reply, such as out of memory, falls back too, without marking
it down). While it is down, the node's heartbeat tries it once a second; the first answer
marks it up again and counts a new `generation` (what the node keeps there is written
again). Each change is logged once, not per call, and told to the owner (`on_change`).

redis-py is imported by the first `Store`: a node without a store (and every command but
`run`) does not load its sixty modules, a tenth of a second of CPU at every start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("mta.cluster")

PREFIX = "mta:"
TIMEOUT = 0.5  # seconds for any one call: above a loaded store's latency, far below a message's
PING_EVERY = 1.0  # seconds between pings while the store is down


class StoreDown(Exception):
    """The store did not answer (in time): fall back to this node's share."""


class Store:
    """Calls to the shared store, each bounded by `timeout`; `up` says whether the last one
    was answered."""

    def __init__(self, url: str, *, timeout: float = TIMEOUT,
                 on_change: Callable[[bool], None] | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self.up = True
        self.generation = 0  # times it came back: a subscription and the leases are renewed then
        self._on_change = on_change
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError, ResponseError

        self._refused = ResponseError  # it answers, with an error
        self._failed = (RedisError, OSError, TimeoutError)  # no answer (in time)
        # A burst of calls (a redelivered prefetch window, each copy looked up in the shared
        # record at once) waits for one of the 16 connections, within the call's timeout; the
        # plain pool refuses the 17th at once ("Too many connections"), which would count as
        # the store being down and send those copies again.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=16, timeout=timeout, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), retry_on_timeout=False, decode_responses=False, health_check_interval=0)
        self.client = redis.Redis(connection_pool=pool)
        self._scripts: dict[str, Any] = {}
        self._dropping: set[asyncio.Task] = set()  # idle connections being closed (the loop keeps weak references)

    def script(self, name: str, source: str) -> None:
        """Register a Lua script; `run(name, ...)` calls it by its digest (EVALSHA, loaded
        again by redis-py when the store restarted without it)."""
        self._scripts[name] = self.client.register_script(source)

    async def run(self, name: str, keys: list, args: list) -> Any:
        return await self.call(self._scripts[name], keys=keys, args=args)

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`await fn(*args, **kwargs)` (a client method or a script) within the timeout."""
        try:
            async with asyncio.timeout(self.timeout):
                result = await fn(*args, **kwargs)
        except self._refused as exc:  # it answers, with an error (out of memory, read-only...)
            log.warning("the cluster store %s refused a call: %s", _safe(self.url), exc)
            raise StoreDown(str(exc)) from exc
        except self._failed as exc:
            self._set(False, exc)
            raise StoreDown(str(exc) or type(exc).__name__) from exc
        if not self.up:
            self._set(True)
        return result

    def _set(self, up: bool, exc: BaseException | None = None) -> None:
        if up == self.up:
            return
        self.up = up
        if up:
            self.generation += 1  # what was kept in the store may be gone: write it again
            log.warning("the cluster store %s answers again: shared limits are back", _safe(self.url))
        else:
            log.warning("the cluster store %s does not answer (%s): this node keeps to its share "
                        "of every limit until it does", _safe(self.url), exc or "no answer")
            # Its idle connections go: after a restart each would fail once more ("Connection
            # closed by server") and mark the store down again just after it came back.
            task = asyncio.ensure_future(self.client.connection_pool.disconnect(inuse_connections=False))
            self._dropping.add(task)
            task.add_done_callback(self._dropping.discard)
        if self._on_change is not None:
            self._on_change(up)

    async def close(self) -> None:
        try:
            await self.client.aclose()
        except self._failed:
            pass


def _safe(url: str) -> str:
    """The URL without a password, for the log."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1) if "://" in url else ("", url)
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
