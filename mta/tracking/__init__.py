"""Where is my message (SPEC §9): every result and what the engine saw, in an event store
(events, store), fed by a tracker inside `mta run` (tracker), read by `mta trace` and
`mta stuck` (commands)."""

from __future__ import annotations

import itertools

_MEMORY = itertools.count()


def attach(engine, config, config_path: str | None):
    """The tracker of this process, told by the engine what it accepts and holds; None when
    tracking is off."""
    if not config.tracking.enabled:
        return None
    from mta.tracking.store import path_for
    from mta.tracking.tracker import Tracker

    path = path_for(config_path) or f"file:mta-events-{next(_MEMORY)}?mode=memory&cache=shared"
    tracker = Tracker(config.tracking, path, engine.time)
    engine.tracking = engine.intake.tracking = engine.outcomes.tracking = tracker
    return tracker


async def tracked(engine_run, tracker) -> None:
    """The engine's run and, beside it, the tracker's until the engine has settled its last
    messages (a stop waits for the deliveries in flight) and their events are written."""
    import asyncio  # here: the writer's process (mta.tracking.child) imports this package without it

    if tracker is None:
        return await engine_run
    await tracker.start()
    stopped = asyncio.Event()

    async def engine() -> None:
        try:
            await engine_run
        finally:
            stopped.set()

    await asyncio.gather(engine(), tracker.run(stopped))


def open_reader(config, path: str | None):
    """A blocking reader of the event store (for `mta trace`, `mta stuck`, the console):
    PostgreSQL with `tracking.store`, else the SQLite file at `path`."""
    if config.store:
        from mta.tracking.shared import SharedEventsSync

        return SharedEventsSync(config.store)
    from mta.tracking.store import EventStore

    return EventStore(path)
