"""Metrics: what an operator's console shows, counted in process and read at scrape time.

Two kinds of numbers, kept cheap for the delivery path:

* State the engine keeps anyway (its outcome counts, each destination's snapshot of its
  queue, workers, connections, limits and mode (shaper.statistics), the MX cache's
  counters) is read by a custom collector when Prometheus scrapes; the delivery path pays
  nothing for it.
* What only exists at the moment of an outcome (which lane and destination, how long the
  message took) is recorded by one call per outcome into plain dicts and bucket lists;
  the collector turns them into counters and histograms at scrape time. No
  prometheus_client object is touched per message.

Destination labels are bounded: a destination gets its own label once it has shown
`promote_after` outcomes while fewer than `top` destinations have one; everything else is
counted under `other`. A label, once given, is kept for the life of the process, so every
counter stays monotonic (a destination's earlier outcomes stay in `other`; the sum over
all labels is always the total). A destination in backoff or paused is always shown with
its own label in the state metrics, because that is what an operator looks for.

This module keeps the counters and histograms; mta.ops.prometheus turns them and the
engine's state into metric families. The HTTP endpoint is prometheus_client's threaded
server on `metrics.port`,
which also serves the operator's console (mta.console) under /console.
"""

from __future__ import annotations

import bisect
import logging
import os
import socket
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING

from mta.clock import SYSTEM
from mta.tls.apply import base_key

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger("mta.metrics")

TOP_DESTINATIONS = 30  # destinations with a label of their own; the rest are `other`
PROMOTE_AFTER = 5  # outcomes a destination shows before it earns its own label
HELD_KEYS = 10_000  # held counts kept for this many destinations before forgotten ones are dropped
OTHER = "other"
LANES = ("single", "bulk")
MODES = ("normal", "backoff", "paused")

# Seconds. Latency spans sub-second (a fast receiver) to a day (max_age) through retries.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Histogram:
    """Cumulative-at-export bucket counts; observe() is one bisect and two additions."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.total = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += times
        self.total += value * times

    def exported(self) -> tuple[list[tuple[str, float]], float]:
        counts = list(self.counts)
        buckets, running = [], 0
        for bound, n in zip((*map(_le, self.bounds), "+Inf"), counts):
            running += n
            buckets.append((bound, running))
        return buckets, self.total


def _le(bound: float) -> str:
    return repr(float(bound))


class RecentCounts:
    """Counts of the last 60 seconds in one-second buckets (the delivery console's
    per-minute numbers); add() costs a comparison and a dict increment."""

    def __init__(self, now: float):
        self.buckets: list[dict] = [{} for _ in range(60)]
        self.second = int(now)

    def _advance(self, second: int) -> None:
        if second <= self.second:  # the same second, or the clock stepped back
            return
        for s in range(self.second + 1, self.second + 1 + min(second - self.second, 60)):
            self.buckets[s % 60] = {}
        self.second = second

    def add(self, key, now: float) -> None:
        second = int(now)
        if second != self.second:
            self._advance(second)
        bucket = self.buckets[self.second % 60]
        bucket[key] = bucket.get(key, 0) + 1

    def total(self, now: float) -> dict:
        self._advance(int(now))
        out: dict = {}
        for bucket in self.buckets:
            for key, n in list(bucket.items()):
                out[key] = out.get(key, 0) + n
        return out


class DestinationLabels:
    """Bounded label values for destinations (see the module docstring)."""

    def __init__(self, top: int = TOP_DESTINATIONS, promote_after: int = PROMOTE_AFTER):
        self.top = top
        self.promote_after = promote_after
        self.named: set[str] = set()
        self._candidates: dict[str, int] = {}

    def of(self, key: str) -> str:
        if key in self.named:
            return key
        if len(self.named) >= self.top:
            return OTHER
        seen = self._candidates.get(key, 0) + 1
        if seen >= self.promote_after:
            self.named.add(key)
            self._candidates.pop(key, None)
            return key
        if len(self._candidates) > 10_000:  # a flood of one-off destinations: start over
            self._candidates.clear()
        self._candidates[key] = seen
        return OTHER

    def current(self, key: str) -> str:
        """The label, without counting an outcome (for gauges)."""
        return key if key in self.named else OTHER


class Metrics:
    """The engine's metrics. Created by the engine; `serve()` starts the endpoint.

    Hooks for other stages (each one cheap, callable from the event loop):
      outcome(job, status, bounce, now)  an attempt's result (mta.settle.outcomes)
      not_tried(job, now)                mail held without an attempt (mta.settle.outcomes)
      observe_dkim_signing(seconds, messages=1)  time spent signing (a batch: its size)
      observe_publish_confirm(seconds)   a batch of publishes until the broker's last confirm
    """

    def __init__(self, engine, *, clock: Callable[[], float] = SYSTEM.wall,
                 top: int = TOP_DESTINATIONS, promote_after: int = PROMOTE_AFTER):
        self.engine = engine
        self.clock = clock
        self.started = clock()
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        self.labels = DestinationLabels(top, promote_after)
        # (lane, destination label, event) -> count; event: delivered, deferred, expired,
        # expired:untried, bounced:hard|soft, not_tried:paused|throttled|backlog
        self.counts: dict[tuple[str, str, str], int] = {}
        self.held_by_destination: dict[str, int] = {}  # destination key -> messages held
        self.delivery_latency = {lane: Histogram(LATENCY_BUCKETS) for lane in LANES}
        self.time_in_queue: dict[tuple[str, str], Histogram] = {}
        self.dkim_signing = Histogram(FAST_BUCKETS)
        self.publish_confirm = Histogram(FAST_BUCKETS)
        self.recent = RecentCounts(self.started)  # the console's "last minute" numbers
        self.server = None

    @cached_property
    def registry(self) -> CollectorRegistry:
        """The Prometheus registry of this process's collector, built by its first reader (the
        endpoint, a test): a process without the endpoint never loads prometheus_client."""
        from mta.ops.prometheus import registry_for  # imported here: that module reads this one's names

        return registry_for(self)

    # ---- hooks (per outcome)

    def _count(self, lane: str, label: str, event: str, now: float) -> None:
        key = (lane, label, event)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        self.recent.add((lane, event), now)

    def outcome(self, job, status: str, bounce: str | None, now: float, *, tried: bool = True) -> None:
        """One delivery attempt ended with `status` (delivered, deferred, bounced, expired).
        Attempts are not counted apart: every attempt ends in exactly one of these. A message
        that expires while held (`tried=False`) counts as expired but not as an attempt."""
        destination = job.destination
        key = destination.key if destination is not None else "unrouted"
        labels = self.labels
        label = key if key in labels.named else labels.of(key)
        lane = job.lane
        if status == "bounced":
            event = _BOUNCED[bounce]
        else:
            event = status if tried else UNTRIED
        counted = (lane, label, event)  # _count, inline: once per message
        self.counts[counted] = self.counts.get(counted, 0) + 1
        self.recent.add((lane, event), now)
        if status == "deferred":
            return
        waited = now - job.first_seen
        if waited < 0:  # first accepted by a host whose clock is ahead
            waited = 0.0
        if status == "delivered":
            self.delivery_latency[lane].observe(waited)
        histogram = self.time_in_queue.get((lane, status))
        if histogram is None:
            histogram = self.time_in_queue[(lane, status)] = Histogram(LATENCY_BUCKETS)
        histogram.observe(waited)

    def not_tried(self, job, now: float) -> None:
        """Mail held back without an attempt: paused, throttled (backoff) or backlog
        (more than the destination can send soon)."""
        key = job.destination.key if job.destination is not None else None
        destination = self.engine.destinations.get(key) if key is not None else None
        mode = destination.statistics().mode if destination is not None else "normal"
        pauses = self.engine.pauses
        if mode == "paused" or (pauses and pauses.paused(now, job.domain, key or job.domain, base_key(key or ""))):
            reason = "paused"
        elif mode == "backoff":
            reason = "throttled"
        else:
            reason = "backlog"
        if key is not None:
            held = self.held_by_destination
            held[key] = held.get(key, 0) + 1
            if len(held) > HELD_KEYS and len(held) > 2 * len(self.engine.destinations):
                self._forget_held()
        self._count(job.lane, self.labels.of(key or job.domain), f"not_tried:{reason}", now)

    def _forget_held(self) -> None:
        """Drop the held counts of destinations the engine has forgotten (`mta status`
        shows them for live destinations only): a stream of one-off domains must not grow
        the map without end. Amortised: it runs once the map is twice the live ones."""
        live = self.engine.destinations
        self.held_by_destination = {k: n for k, n in self.held_by_destination.items() if k in live}

    def observe_dkim_signing(self, seconds: float, messages: int = 1) -> None:
        """`seconds` spent signing `messages` messages (a batch signed in a worker counts
        as that many messages of the average time)."""
        if messages > 0:
            self.dkim_signing.observe(seconds / messages, messages)

    def observe_publish_confirm(self, seconds: float) -> None:
        """From handing a batch of publishes to the broker to its last confirm."""
        self.publish_confirm.observe(seconds)

    def last_minute(self, now: float) -> dict[str, dict[str, int]]:
        """Events of the last 60 s, per lane and in all: {lane or "all": {kind: count}}."""
        out: dict[str, dict[str, int]] = {"all": {}}
        for (lane, event), n in self.recent.total(now).items():
            kind = event.partition(":")[0]
            for row in (out["all"], out.setdefault(lane, {})):
                row[kind] = row.get(kind, 0) + n
                if is_attempt(event):
                    row["attempt"] = row.get("attempt", 0) + n
        return out

    # ---- the endpoint

    def serve(self, address: str, port: int, console=None) -> None:
        """The endpoint: /metrics, and the operator's console (a WSGI app) under /console."""
        from mta.ops.httpd import start

        try:
            self.server = start(address, port, self.registry, console)
        except OSError as exc:
            # Mail matters more than its metrics: deliver without the endpoint, loudly.
            log.error("cannot serve metrics on %s:%d (%s); running without the metrics endpoint",
                      address, port, exc)
            return
        log.info("metrics at http://%s:%d/metrics", address, port)
        if console is not None:
            log.info("console at http://%s:%d/console", address, port)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


_BOUNCED = {"hard": "bounced:hard", "soft": "bounced:soft", None: "bounced:soft"}
ATTEMPT_OUTCOMES = ("delivered", "deferred", "bounced", "expired")
UNTRIED = "expired:untried"  # expired while held: an outcome, not an attempt


def is_attempt(event: str) -> bool:
    return event.partition(":")[0] in ATTEMPT_OUTCOMES and event != UNTRIED
