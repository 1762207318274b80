"""The pure decision core of the MTA: no I/O, no clock, no event loop.

``mta/`` asks, ``shaper`` answers with frozen values: when a message is due
again (``retry``), what a reply means (``replies``), whether a destination may
take another message (``limiter``) or connection (``window``) now, and what
mode it is in (``state``). Time always comes in as a ``now`` argument.
"""

from shaper.limiter import Decision, Gcra
from shaper.replies import Verdict, classify, parse_enhanced
from shaper.retry import RetryDecision, RetrySchedule
from shaper.state import (
    TRANSITIONS,
    DestinationState,
    Event,
    IllegalTransition,
    Mode,
    Transition,
)
from shaper.units import Duration, Rate
from shaper.window import ConnectionWindow

__all__ = [
    "TRANSITIONS",
    "ConnectionWindow",
    "Decision",
    "DestinationState",
    "Duration",
    "Event",
    "Gcra",
    "IllegalTransition",
    "Mode",
    "Rate",
    "RetryDecision",
    "RetrySchedule",
    "Transition",
    "Verdict",
    "classify",
    "parse_enhanced",
]
