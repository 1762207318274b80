"""A provider's limits over all of its destinations.

A domain with its own `domains:` entry gets a destination of its own (`domain:NAME`: its
own limits, pause, feedback and connections), also when its MX hosts belong to a
`providers:` group. The provider's limits still bound all of the provider's mail
together: the domain's own limits are capped by the provider's (mta.routing.rules), and the
sessions of the provider's destination and of all its domains' destinations together
never exceed the provider's `connection_limit`, and their messages together its
`max_message_rate`. That shared count is a `Share`: a destination starts a session only
while its share has room; one that finds it full waits in line (first come, first
served), and an idle session of another destination of the same provider is closed to
make room, as the process's connection budget does (mta.destinations.budget). A destination with
several sessions gives one up (after its current message) while another waits with
none, and a destination's worker that reconnects lets the one in line go first: a
backlog in one domain cannot starve another of the provider. Each message books a slot
in its destination's rate and in the share's, and goes at the later of the two. As they
all drain through the share's rate, what they keep in memory together is bounded by it
(shaper.allowance.shared_fits), and a slot of the share's more than `MAX_WAIT` ahead is
not waited for: the message is held instead.

Shares live as long as the process (one per provider that has mail, so their number is
bounded by the rules file) and outlive reloads, which only change their limits.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from mta.config import Policy
from shaper.limiter import message_burst
from shaper.allowance import HeldLedger
from shaper.limiter import Gcra
from shaper.units import Rate

if TYPE_CHECKING:
    from mta.destinations.delivery import Destination
    from mta.routing.rules import Resolved, Rules

UNBOUNDED = Policy(connection_limit=1 << 30, max_message_rate=Rate(1e9, 1.0))  # a provider that is gone


class Share:
    __slots__ = ("key", "limit", "in_use", "rate", "per_second", "queued", "held", "_waiting", "members",
                 "__weakref__")

    def __init__(self, key: str, policy: Policy):
        self.key = key  # the provider's destination key, "provider:NAME"
        self.limit = policy.connection_limit
        self.in_use = 0  # sessions open or opening in all destinations of the provider
        self.per_second = per_second = policy.max_message_rate.per_second
        self.rate = Gcra(policy.max_message_rate, burst=message_burst(per_second))  # all their messages
        # Messages all its destinations keep in memory without a slot in ``rate`` yet (their
        # ready queues, and jobs taken but not paced), and those held for the share: what
        # bounds their memory together (shaper.allowance.shared_fits).
        self.queued = 0
        self.held = HeldLedger()
        self._waiting: deque[Destination] = deque()
        self.members: weakref.WeakSet[Destination] = weakref.WeakSet()

    def apply(self, policy: Policy, now: float) -> None:
        self.limit = policy.connection_limit
        rate = policy.max_message_rate
        self.per_second = rate.per_second
        self.rate.set_rate(rate, now, burst=message_burst(rate.per_second))

    @property
    def full(self) -> bool:
        return self.in_use >= self.limit

    def take(self) -> None:
        self.in_use += 1

    def give_back(self) -> None:
        self.in_use -= 1

    def wait(self, destination: Destination, close_idle: bool = True) -> None:
        """``destination`` wants a session while the share is full: it is served when a
        session of the provider ends; an idle session elsewhere is closed for it (one per
        destination in line, not one per call)."""
        if destination in self._waiting:
            return
        self._waiting.append(destination)
        if close_idle:
            for member in self.members:
                if member is not destination and member.close_one_idle():
                    break

    def wanted_by_other(self, destination: Destination) -> bool:
        """Another destination of the provider waits for a session."""
        return bool(self._waiting) and any(d is not destination for d in self._waiting)

    def yields(self, destination: Destination) -> bool:
        """``destination`` should give up a session now: it has several while another
        destination of the provider waits for one (each keeps one, and takes turns at
        its reconnects)."""
        return bool(self._waiting) and destination.workers > 1 and self.wanted_by_other(destination)

    def serve(self) -> None:
        """Room again: the destinations in line start their sessions, in order."""
        while self._waiting and not self.full:
            self._waiting.popleft().share_granted()


class Shares:
    """The shares of the providers, by destination key."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._shares: dict[str, Share] = {}
        self._clock = clock  # monotonic (mta.clock.Clock.now): the rates' time

    def of(self, resolved: Resolved) -> Share | None:
        """The share a destination of ``resolved`` joins; None outside any provider."""
        if resolved.group is None:
            return None
        share = self._shares.get(resolved.group)
        if share is None:
            share = self._shares[resolved.group] = Share(resolved.group, resolved.group_policy)
        return share

    def reload(self, rules: Rules) -> None:
        """New rules: a provider's new limits apply at once (sessions above its
        connection_limit finish); a provider that is gone no longer bounds anything."""
        now = self._clock()
        for key, share in self._shares.items():
            share.apply(rules.provider_policy(key) or UNBOUNDED, now)
            share.serve()

    def __len__(self) -> int:
        return len(self._shares)
