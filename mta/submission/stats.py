"""What the listeners count, per source: accepted messages and recipients, refusals by
reason, failed logins; totals for Prometheus and the last minute for `mta status`."""

from __future__ import annotations

from collections.abc import Callable

from mta.ops.metrics import RecentCounts

UNKNOWN = "(unknown)"  # a refusal before any source is known (no login, no allowlisted address)

REASONS = ("no_source", "auth", "auth_locked", "sender", "rate", "recipients", "size", "line_endings",
           "address", "broker")


class Stats:
    def __init__(self, wall: Callable[[], float], sources: list[str]):
        self._wall = wall
        self.sources = list(sources)
        self.accepted: dict[str, int] = dict.fromkeys(sources, 0)
        self.recipients: dict[str, int] = dict.fromkeys(sources, 0)
        self.octets: dict[str, int] = dict.fromkeys(sources, 0)
        self.refused: dict[tuple[str, str], int] = {}
        self.auth_failures: dict[str, int] = {}
        self.connections: dict[str, int] = {}  # by listener address
        self.open: dict[str, int] = {}
        self.recent = RecentCounts(wall())

    def accept(self, source: str, recipients: int, octets: int) -> None:
        self.accepted[source] = self.accepted.get(source, 0) + 1
        self.recipients[source] = self.recipients.get(source, 0) + recipients
        self.octets[source] = self.octets.get(source, 0) + octets
        self.recent.add((source, "accepted"), self._wall())

    def refuse(self, source: str | None, reason: str) -> None:
        key = (source or UNKNOWN, reason)
        self.refused[key] = self.refused.get(key, 0) + 1
        self.recent.add((key[0], "refused"), self._wall())

    def auth_failed(self, source: str | None) -> None:
        name = source or UNKNOWN
        self.auth_failures[name] = self.auth_failures.get(name, 0) + 1
        self.recent.add((name, "auth_failures"), self._wall())

    def last_minute(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (source, event), n in self.recent.total(self._wall()).items():
            out.setdefault(source, {})[event] = n
        return out
