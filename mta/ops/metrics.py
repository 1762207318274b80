"""Prometheus metrics: what an operator's console shows, read at scrape time.

Two kinds of numbers, kept cheap for the delivery path:

* State the engine keeps anyway (its outcome counts, each destination's queue, workers,
  connections, limits and mode, the MX cache's counters) is read by a custom collector
  when Prometheus scrapes; the delivery path pays nothing for it.
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

The HTTP endpoint is prometheus_client's threaded server on `metrics.port`; the collector
copies what it reads (list()/dict() of builtins are atomic under the GIL) and never
blocks the event loop.
"""

from __future__ import annotations

import bisect
import logging
import os
import socket
from collections.abc import Callable, Iterable

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from mta.clock import SYSTEM

log = logging.getLogger("mta.metrics")

TOP_DESTINATIONS = 30  # destinations with a label of their own; the rest are `other`
PROMOTE_AFTER = 5  # outcomes a destination shows before it earns its own label
MAX_STATE_SERIES = 100  # destinations in backoff/paused shown individually, at most
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
      outcome(job, status, bounce, now)  an attempt's result (the engine's `_finish`)
      not_tried(job, now)                mail held without an attempt (the engine's `_hold`)
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
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        self.server = None

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
        self._count(lane, label, event, now)
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
        mode = _mode(destination)
        pauses = self.engine.pauses
        if mode == "paused" or (pauses and pauses.paused(now, job.domain, key or job.domain)):
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

    def serve(self, address: str, port: int) -> None:
        from prometheus_client import start_http_server

        try:
            self.server, _thread = start_http_server(port, addr=address, registry=self.registry)
        except OSError as exc:
            # Mail matters more than its metrics: deliver without the endpoint, loudly.
            log.error("cannot serve metrics on %s:%d (%s); running without the metrics endpoint",
                      address, port, exc)
            return
        log.info("metrics at http://%s:%d/metrics", address, port)

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


def _mode(destination) -> str:
    """normal / backoff / paused from the destination's state machine, when it has one."""
    state = getattr(destination, "state", None)
    return str(state.mode) if state is not None else "normal"


EVENTS = {
    "delivered": ("mta_delivered", "Messages accepted by the receiving server (2xx)."),
    "deferred": ("mta_deferred", "Temporary failures: the message is retried later."),
    "expired": ("mta_expired", "Messages given up after their maximum age or attempts (also mail that "
                "reached its maximum age while held, not tried)."),
}


class _Collector:
    def __init__(self, metrics: Metrics):
        self.m = metrics

    def collect(self) -> Iterable:
        m, engine = self.m, self.m.engine
        now = m.clock()
        counts = dict(m.counts)
        engine_counts = dict(engine.counts)

        yield _counter("mta_messages_processed", "Messages consumed from the lanes (every delivery of a "
                       "message by the broker, including held mail coming back).", engine_counts.get("consumed", 0))
        yield _counter("mta_messages_invalid", "Messages sent to mta.invalid: refused at intake, or a retry or "
                       "held copy that could not be republished.",
                       engine_counts.get("invalid", 0))
        attempts: dict[tuple[str, str], int] = {}
        for (lane, label, event), n in counts.items():
            if is_attempt(event):
                attempts[(lane, label)] = attempts.get((lane, label), 0) + n
        family = CounterMetricFamily("mta_delivery_attempts", "Delivery attempts (every try that ended in "
                                     "delivered, deferred, bounced or expired, DNS failures included).",
                                     labels=["lane", "destination"])
        for labels, n in attempts.items():
            family.add_metric(list(labels), n)
        yield family
        for event, (name, text) in EVENTS.items():
            family = CounterMetricFamily(name, text, labels=["lane", "destination"])
            _fill(family, counts, event)
            yield family
        bounced = CounterMetricFamily("mta_bounced", "Permanent failures, by RFC 3463 class (hard: 5.1.x, "
                                      "unknown user or domain; soft: everything else).",
                                      labels=["lane", "destination", "bounce"])
        not_tried = CounterMetricFamily("mta_not_tried", "Mail held back without an attempt: paused (operator or "
                                        "suspend pattern), throttled (destination in backoff), backlog (more than "
                                        "the destination can send soon).", labels=["lane", "destination", "reason"])
        for (lane, label, event), n in counts.items():
            kind, _, detail = event.partition(":")
            if kind == "bounced":
                bounced.add_metric([lane, label, detail], n)
            elif kind == "not_tried":
                not_tried.add_metric([lane, label, detail], n)
        yield bounced
        yield not_tried

        latency = HistogramMetricFamily("mta_delivery_latency_seconds", "From first acceptance to delivery "
                                        "(retries included), per delivered message.", labels=["lane"])
        for lane, histogram in m.delivery_latency.items():
            buckets, total = histogram.exported()
            latency.add_metric([lane], buckets, total)
        yield latency
        queued = HistogramMetricFamily("mta_time_in_queue_seconds", "From first acceptance to the final outcome: "
                                       "how long messages stay in the MTA's queues.", labels=["lane", "status"])
        for (lane, status), histogram in list(m.time_in_queue.items()):
            buckets, total = histogram.exported()
            queued.add_metric([lane, status], buckets, total)
        yield queued
        for name, text, histogram in (
                ("mta_dkim_signing_seconds", "Time spent computing one DKIM signature.", m.dkim_signing),
                ("mta_broker_confirm_seconds", "From publishing a batch of results/retries to the broker's "
                 "confirms.", m.publish_confirm)):
            family = HistogramMetricFamily(name, text)
            buckets, total = histogram.exported()
            family.add_metric([], buckets, total)
            yield family

        resolver = engine.resolver
        yield _counter("mta_dns_lookups", "MX lookups sent to DNS (cache misses).", resolver.lookups)
        yield _counter("mta_dns_cache_hits", "MX answers served from the cache.", resolver.cache_hits)
        yield from _destination_families(m, engine, now)
        yield from _budget_families(engine)
        yield from _control_families(engine)
        yield GaugeMetricFamily("mta_start_time_seconds", "When this process started (Unix time).",
                                value=m.started)


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, text, value=value)


def _fill(family: CounterMetricFamily, counts: dict, event: str) -> None:
    per_label: dict[tuple[str, str], int] = {}
    for (lane, label, name), n in counts.items():
        if name.partition(":")[0] == event:
            per_label[(lane, label)] = per_label.get((lane, label), 0) + n
    for labels, n in per_label.items():
        family.add_metric(list(labels), n)


def _destination_families(m: Metrics, engine, now: float) -> Iterable:
    destinations = list(engine.destinations.values())
    queued = GaugeMetricFamily("mta_destination_queued", "Messages in memory waiting for a connection.",
                               labels=["destination"])
    open_ = GaugeMetricFamily("mta_connections_open", "SMTP sessions open.", labels=["destination"])
    busy = GaugeMetricFamily("mta_connections_in_use", "Connection workers busy with a message or a connect "
                             "(the rest wait idle for mail).", labels=["destination"])
    conn_limit = GaugeMetricFamily("mta_destination_connection_limit", "connection_limit in force (a "
                                   "throttle lowers it while in backoff).", labels=["destination"])
    allowed = GaugeMetricFamily("mta_destination_connections_allowed", "Connections the destination may open "
                                "now: the feedback window, which grows towards connection_limit with "
                                "successes and halves on pushback.", labels=["destination"])
    rate_limit = GaugeMetricFamily("mta_destination_message_rate_limit", "Message rate in force, messages "
                                   "per second (max_message_rate, lowered by a throttle or by what receivers "
                                   "accept).", labels=["destination"])
    state = GaugeMetricFamily("mta_destination_state", "1 for the mode a destination is in "
                              "(normal, backoff, paused); destinations in backoff or paused keep their own label.",
                              labels=["destination", "state"])
    reason = GaugeMetricFamily("mta_destination_backoff_info", "A destination in backoff or paused, and why "
                               "(value: until when, Unix time; 0: until resumed).", labels=["destination", "state", "reason"])
    modes = GaugeMetricFamily("mta_destinations", "Destinations known to this process, by mode.", labels=["state"])

    sums: dict[str, list[float]] = {}
    by_mode = dict.fromkeys(MODES, 0)
    shown = 0
    for d in destinations:
        mode = _mode(d)
        by_mode[mode] = by_mode.get(mode, 0) + 1
        label = m.labels.current(d.key)
        if mode != "normal" and shown < MAX_STATE_SERIES:
            label = d.key
            shown += 1
            st = d.state
            reason.add_metric([d.key, mode, _short(st.reason)], st.until or 0)
        window = getattr(d, "window", None)
        limit = d.policy.connection_limit
        may_open = window.allowed if window is not None else limit
        waiting = getattr(d, "idle_workers", 0)
        row = sums.setdefault(label, [0, 0, 0, 0, 0.0, mode, 0])
        row[0] += d.queued
        row[1] += d.connected
        row[2] += max(0, d.workers - waiting)
        row[3] += limit
        row[4] += getattr(d, "per_second", None) or d.policy.max_message_rate.per_second
        row[6] += may_open
        if label != OTHER:
            row[5] = mode
    for label, (q, c, b, limit, rate, mode, may_open) in sums.items():
        allowed.add_metric([label], may_open)
        queued.add_metric([label], q)
        open_.add_metric([label], c)
        busy.add_metric([label], b)
        conn_limit.add_metric([label], limit)
        rate_limit.add_metric([label], rate)
        if label != OTHER:
            for each in MODES:
                state.add_metric([label, each], 1 if each == mode else 0)
    # Operator pauses that no destination carries (a paused domain, or a destination
    # without a state machine): shown under the target's name.
    pauses = engine.pauses.active(now) if hasattr(engine.pauses, "active") else {}
    for target, until in pauses.items():
        if target in sums and target != OTHER:
            continue
        by_mode["paused"] += 1
        for each in MODES:
            state.add_metric([target, each], 1 if each == "paused" else 0)
        reason.add_metric([target, "paused", "paused by operator (mta pause)"], until or 0)
    for mode, n in by_mode.items():
        modes.add_metric([mode], n)
    yield from (queued, open_, busy, conn_limit, allowed, rate_limit, state, reason, modes)


def _budget_families(engine) -> Iterable:
    """The process-wide connection budget (mta.destinations.budget): its size, use, and who waited."""
    budget = getattr(engine, "budget", None)
    if budget is None:
        return
    yield GaugeMetricFamily("mta_connections_budget", "Outbound SMTP connections this process may hold "
                            "(smtp.max_connections, or what the file-descriptor limit allows).", value=budget.limit)
    yield GaugeMetricFamily("mta_connections_budget_in_use", "Connection slots held: sessions open or "
                            "connecting, all destinations together.", value=budget.in_use)
    yield GaugeMetricFamily("mta_connections_budget_waiting", "Destinations waiting for a connection slot "
                            "(a wait is not a delivery attempt).", value=budget.waiting)
    yield _counter("mta_connections_budget_waits", "Times a destination had to wait for a connection slot.",
                   budget.waits)
    yield _counter("mta_connections_budget_evictions", "Idle connections closed, least recently used first, "
                   "to make room for a destination waiting for a slot.", budget.evictions)
    yield _counter("mta_connections_budget_yields", "Reconnects given up so that a destination without a "
                   "connection (or single mail) got the slot.", budget.yields)


def _control_families(engine) -> Iterable:
    """Control commands refused by mta.ops.control.Gate, by reason (unsigned, bad_signature, ...)."""
    gate = getattr(engine, "control_gate", None)
    if gate is None:
        return
    family = CounterMetricFamily("mta_control_refused", "Control messages (mta.control) ignored: unsigned, "
                                 "bad_signature, stale, replayed, malformed, too_large (over 64 KiB), or an "
                                 "answer refused (reply_to).",
                                 labels=["reason"])
    for reason, n in dict(gate.refused).items():
        family.add_metric([reason], n)
    yield family


def _short(text: str, limit: int = 100) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
