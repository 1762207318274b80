"""The operator's web console at /console on the metrics port (SPEC §9): overview,
destinations, one destination, message lookup, pauses, stuck mail; server-rendered HTML
(pages) behind a login rule (auth), served by the metrics endpoint's threads (app)."""

from __future__ import annotations

import asyncio


def for_engine(engine):
    """The console's WSGI app for this engine (called on its event loop), or None when
    `console.enabled` is false."""
    if not engine.config.console.enabled:
        return None
    from mta.console.app import Console

    tracking = engine.tracking
    return Console(engine, asyncio.get_running_loop(), store_path=None if tracking is None else tracking.store.path)
