"""What a destination hands on: typed values instead of positional callbacks.

Theory of operation: a destination's decisions (shaper.destination) and its workers
(mta.destinations) tell the rest of the process what became of a message with one typed
value each, so a reader sees the fields by name and a callee cannot mix up their order:

* `Attempt`: an attempt ended with ``reply`` (the outcome is decided from it later,
  shaper.disposition); ``mx`` and ``ip`` are the host and address tried (None before any
  was), ``override`` an operator's pattern's verdict (True bounce, False retry, None: no
  pattern said).
* `Held`: not tried, into a delay queue for ``delay`` seconds; ``reason`` says why
  ("paused", "rate", "allowance", "provider", "connection rate").

And what a worker is told to do next (`DestinationCore.next_job`): a job to send now, a
`Wait` for a rate slot booked for ``job`` at ``until`` (monotonic seconds), or `IDLE`:
nothing for it now.

Jobs and replies are the shell's objects; nothing here reads them. Each value is built
once per message on the hot path, so they are msgspec Structs (slots, no GC tracking: they
hold no cycles), the cheapest immutable records Python has.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["IDLE", "Attempt", "Held", "Idle", "Wait"]


class Attempt(msgspec.Struct, frozen=True, gc=False):
    job: Any
    reply: Any
    mx: str | None
    ip: str | None
    override: bool | None


class Held(msgspec.Struct, frozen=True, gc=False):
    job: Any
    delay: int
    reason: str


class Wait(msgspec.Struct, frozen=True, gc=False):
    """``job``'s rate slot is booked at ``until``: the worker holds it until then."""
    until: float
    job: Any


class Idle:
    """Nothing for this worker now: it waits for mail on its session, or ends."""
    __slots__ = ()


IDLE = Idle()  # the one instance: asking for the next job allocates nothing when there is none
