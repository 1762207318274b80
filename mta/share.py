"""A provider's connection limit over all of its destinations.

A domain with its own `domains:` entry gets a destination of its own (`domain:NAME`: its
own limits, pause, feedback and connections), also when its MX hosts belong to a
`providers:` group. The provider's limits still bound all of the provider's mail
together: the domain's own limits are capped by the provider's (mta.rules), and the
sessions of the provider's destination and of all its domains' destinations together
never exceed the provider's `connection_limit`. That shared count is a `Share`: a
destination starts a session only while its share has room; one that finds it full
waits in line (first come, first served), and an idle session of another destination of
the same provider is closed to make room, as the process's connection budget does
(mta.budget).

Shares live as long as the process (one per provider that has mail, so their number is
bounded by the rules file) and outlive reloads, which only change their limits.
"""

from __future__ import annotations

import weakref
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mta.delivery import Destination
    from mta.rules import Resolved, Rules


class Share:
    __slots__ = ("key", "limit", "in_use", "_waiting", "members", "__weakref__")

    def __init__(self, key: str, limit: int):
        self.key = key  # the provider's destination key, "provider:NAME"
        self.limit = limit
        self.in_use = 0  # sessions open or opening in all destinations of the provider
        self._waiting: deque[Destination] = deque()
        self.members: weakref.WeakSet[Destination] = weakref.WeakSet()

    @property
    def full(self) -> bool:
        return self.in_use >= self.limit

    def take(self) -> None:
        self.in_use += 1

    def give_back(self) -> None:
        self.in_use -= 1

    def wait(self, destination: Destination) -> None:
        """``destination`` wants a session while the share is full: it is served when a
        session of the provider ends; an idle session elsewhere is closed for it."""
        if destination not in self._waiting:
            self._waiting.append(destination)
        for member in self.members:
            if member is not destination and member.close_one_idle():
                break

    def wanted_by_other(self, destination: Destination) -> bool:
        """Another destination of the provider waits for a session."""
        return any(d is not destination for d in self._waiting)

    def serve(self) -> None:
        """Room again: the destinations in line start their sessions, in order."""
        while self._waiting and not self.full:
            self._waiting.popleft().share_granted()


class Shares:
    """The shares of the providers, by destination key."""

    def __init__(self) -> None:
        self._shares: dict[str, Share] = {}

    def of(self, resolved: Resolved) -> Share | None:
        """The share a destination of ``resolved`` joins; None outside any provider."""
        if resolved.group is None:
            return None
        share = self._shares.get(resolved.group)
        if share is None:
            share = self._shares[resolved.group] = Share(resolved.group, resolved.group_limit)
        return share

    def reload(self, rules: Rules) -> None:
        """New rules: a provider's new connection_limit applies at once (sessions above
        it finish); a provider that is gone no longer bounds anything."""
        for key, share in self._shares.items():
            limit = rules.provider_limit(key)
            share.limit = limit if limit is not None else 1 << 30
            share.serve()

    def __len__(self) -> int:
        return len(self._shares)
