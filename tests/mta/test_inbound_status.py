"""`mta status` shows the inbound listeners and what their reports became (SPEC §8)."""

import asyncio

from mta.config import parse_config
from mta.ops.status import _render_submission
from mta.submission.service import Listeners


def test_status_names_inbound_listeners_refusals_and_reports() -> None:
    config = parse_config({"inbound": [{"address": "127.0.0.1:2525", "domains": ["bounces.example"]}]})

    async def made() -> Listeners:  # on a loop, as `mta run` makes them
        return Listeners(config)

    listeners = asyncio.run(made())
    listeners.reports[0].refuse("relay")
    listeners.receiver.counts.update(["bounced", "bounced", "unmatched"])
    listeners.receiver.suppressed.update(["hard_bounce"])
    lines = _render_submission(listeners.status())
    assert lines == [
        "  inbound 127.0.0.1:2525 (bounces.example; 0 connections): refused relay 1",
        "    reports since start: bounced 2, unmatched 1; list entries added: hard_bounce 1",
    ]
