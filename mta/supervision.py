"""Supervision of a broker session's tasks: each runs until the session ends, and one that
raises or returns ends the session (mta.engine), named in a TaskCrashed so the crash is
logged and counted by the task it ended.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from mta.broker.errors import BrokerLost

log = logging.getLogger("mta.engine")


class TaskCrashed(Exception):
    """A session's task raised (its error is the cause), or returned though it must run
    until the session ends."""

    def __init__(self, task: str):
        super().__init__(f"{task} ended")
        self.task = task


async def endless(task: str, work) -> None:
    """Await `work`, which runs until cancelled: anything else ends the session, as a
    TaskCrashed naming the task, except a lost broker, which is no crash."""
    try:
        await work
    except BrokerLost:
        raise
    except Exception as exc:
        raise TaskCrashed(task) from exc
    raise TaskCrashed(task)


def leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def cancelled(queue: str, lost: asyncio.Event) -> Callable[[], None]:
    """What to do when the broker cancels a consumer (its queue deleted or failed over):
    without a consumer the process would idle forever, so the session ends."""
    def on_cancel() -> None:
        log.warning("the broker cancelled the consumer of %s; reconnecting", queue)
        lost.set()

    return on_cancel
