"""What becomes of a message after an attempt, or when it is held: its disposition.

Theory of operation: an attempt ends in a reply (or in no reply: a refused connection, a
timeout, a DNS failure). The reply says accepted or not; if not, its code, enhanced code and
text say permanent or temporary (shaper.replies.classify), an operator's pattern may
override that (`verdict`), and a caller that knows better (a DNS answer that the domain does
not exist, a smarthost refusing our credentials) says so with `permanent`. A temporary
failure is retried on the message's schedule (shaper.retry) until its attempts or its age
run out, and then it expires. A held message (its destination cannot take it soon) is
given back for a while without an attempt, but never past its maximum age: there it
expires instead, so holding cannot keep mail alive forever.

Every function here is pure: the time is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shaper.allowance import within_age
from shaper.replies import classify
from shaper.retry import RetrySchedule

__all__ = ["Bounced", "Deferred", "Delivered", "Disposition", "Expired", "after_attempt", "after_hold"]


@dataclass(frozen=True, slots=True)
class Delivered:
    """The receiver accepted the message."""


@dataclass(frozen=True, slots=True)
class Bounced:
    """Refused for good: `kind` "hard" (the address does not exist) or "soft" (anything else)."""

    kind: Literal["hard", "soft"]


@dataclass(frozen=True, slots=True)
class Deferred:
    """Tried again after `delay` seconds."""

    delay: float


@dataclass(frozen=True, slots=True)
class Expired:
    """Out of attempts or of age: given up, as a soft bounce."""

    kind: Literal["soft"] = "soft"


Disposition = Delivered | Bounced | Deferred | Expired

DELIVERED = Delivered()
EXPIRED = Expired()


def after_attempt(code: int | None, enhanced: str | None, text: str, *, accepted: bool,
                  schedule: RetrySchedule, attempts: int, first_seen: float, now: float,
                  max_attempts: int = 0, permanent: bool | None = None,
                  verdict: bool | None = None) -> Disposition:
    """The disposition after `attempts` attempts (this one included) ending in this reply.

    `permanent`: the caller's own judgement, which wins over the reply (True: a hard
    bounce, False: temporary); `verdict`: an operator's pattern, which wins over the reply
    code (True: bounce, False: retry)."""
    if accepted:
        return DELIVERED
    if permanent is None:
        classified = classify(code, enhanced, text)
        permanent, bounce = classified.permanent, classified.bounce
        if verdict is not None:
            permanent = verdict
            bounce = (bounce or "soft") if verdict else None
    else:
        bounce = "hard" if permanent else None
    if permanent:
        return Bounced("hard" if bounce == "hard" else "soft")
    decision = schedule.decide(attempts, first_seen, now, max_attempts=max_attempts)
    return Deferred(decision.delay) if decision.retry else EXPIRED


def after_hold(delay: int, *, expires: float, now: float) -> Deferred | Expired:
    """A message held for `delay` seconds (a rung of the delay ladder): back after at most
    what is left of its age, rounded to a rung (`expires`: the moment its maximum age is
    reached), or expired if nothing is left."""
    if now >= expires:
        return EXPIRED
    return Deferred(within_age(delay, expires - now))
