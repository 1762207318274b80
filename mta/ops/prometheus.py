"""The Prometheus collector: the engine's state and the counters of mta.ops.metrics turned
into metric families when Prometheus scrapes.

Nothing here runs on the delivery path. The collector runs in prometheus_client's server
thread: it copies what it reads (list()/dict() of builtins are atomic under the GIL) and
never blocks the event loop.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from mta.ops.metrics import MODES, OTHER, Metrics, is_attempt

MAX_STATE_SERIES = 100  # destinations in backoff/paused shown individually, at most

EVENTS = {
    "delivered": ("mta_delivered", "Messages accepted by the receiving server (2xx)."),
    "deferred": ("mta_deferred", "Temporary failures: the message is retried later."),
    "expired": ("mta_expired", "Messages given up after their maximum age or attempts (also mail that "
                "reached its maximum age while held, not tried)."),
}


def registry_for(metrics: Metrics) -> CollectorRegistry:
    """A registry holding only this process's collector (no default process metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(metrics))
    return registry


class Collector:
    def __init__(self, metrics: Metrics):
        self.m = metrics

    def collect(self) -> Iterable:
        m, engine = self.m, self.m.engine
        now = m.clock()
        engine_counts = dict(engine.counts)
        yield _counter("mta_messages_processed", "Messages consumed from the lanes (every delivery of a "
                       "message by the broker, including held mail coming back).", engine_counts.get("consumed", 0))
        yield _counter("mta_messages_invalid", "Messages sent to mta.invalid: refused at intake, or a retry or "
                       "held copy that could not be republished.",
                       engine_counts.get("invalid", 0))
        yield from _outcome_families(dict(m.counts))
        yield from _histogram_families(m)
        resolver = engine.resolver
        yield _counter("mta_dns_lookups", "MX lookups sent to DNS (cache misses).", resolver.lookups)
        yield _counter("mta_dns_cache_hits", "MX answers served from the cache.", resolver.cache_hits)
        yield _tls_family(getattr(getattr(engine, "outcomes", None), "tls", None))
        yield from _destination_families(m, engine, now)
        yield from _budget_families(engine)
        yield from _control_families(engine)
        yield from _cluster_families(engine)
        yield from _submission_families(engine)
        suppressed = CounterMetricFamily("mta_suppressed", "Messages not sent because their recipient is on the "
                                         "suppression list (one final `suppressed` result each), by the entry's "
                                         "reason.", labels=["reason"])
        suppression = getattr(engine, "suppression", None)
        counts = suppression.counts if suppression is not None else {}
        for reason in sorted({"hard_bounce", "complaint", "manual", *counts}):
            suppressed.add_metric([reason], counts.get(reason, 0))
        yield suppressed
        tracking = getattr(engine, "tracking", None)
        if tracking is not None:
            yield GaugeMetricFamily("mta_stuck_messages", "Messages accepted and not finished whose last event "
                                    "is older than tracking.stuck_after (`mta stuck` lists them).", value=tracking.stuck)
        crashes = CounterMetricFamily("mta_task_crashes", "Bugs that ended a broker session, by the task they "
                                      "crashed (settler, forget idle, session): each logged with its traceback; "
                                      "what the session held came back from the broker and a new one started.",
                                      labels=["task"])
        for task, n in sorted(engine.crashes.items()):
            crashes.add_metric([task], n)
        yield crashes
        yield GaugeMetricFamily("mta_start_time_seconds", "When this process started (Unix time).",
                                value=m.started)


def _cluster_families(engine) -> Iterable:
    """Several nodes (mta.cluster): whether the shared store answers, and the nodes seen."""
    cluster = engine.cluster
    if cluster is None:
        return
    yield GaugeMetricFamily("mta_cluster_store_up", "1 while the shared store answers; 0 while this node "
                            "keeps to its share of every limit (the limit divided by the nodes seen).",
                            value=1 if cluster.up else 0)
    yield GaugeMetricFamily("mta_cluster_nodes", "Nodes seen in the last minute (what the limits are "
                            "shared by while the store is down).", value=cluster.nodes.live())


def _submission_families(engine) -> Iterable:
    """SMTP submission (SPEC §7), per source: accepted, refused by reason, failed logins."""
    listeners = engine.listeners
    if listeners is None:
        return
    stats = listeners.stats
    families = (("mta_submission_messages", "Submissions accepted (250 after DATA: the broker holds every "
                 "recipient's message), by source.", stats.accepted),
                ("mta_submission_recipients", "Recipients of accepted submissions, by source.", stats.recipients),
                ("mta_submission_auth_failures", "Failed or refused logins, by the source whose user name was "
                 "tried ((unknown): no such user).", stats.auth_failures))
    for name, text, counts in families:
        family = CounterMetricFamily(name, text, labels=["source"])
        for source, n in sorted(counts.items()):
            family.add_metric([source], n)
        yield family
    refused = CounterMetricFamily("mta_submission_refused", "Commands refused, by source ((unknown): before "
                                  "any source was known) and reason (no_source, auth, auth_locked, sender, rate, "
                                  "recipients, size, line_endings, address, broker).", labels=["source", "reason"])
    for (source, reason), n in sorted(stats.refused.items()):
        refused.add_metric([source, reason], n)
    yield refused
    connections = CounterMetricFamily("mta_submission_connections", "Client connections, by listener.",
                                      labels=["listener"])
    for address, n in sorted(stats.connections.items()):
        connections.add_metric([address], n)
    yield connections
    yield GaugeMetricFamily("mta_submission_broker_up", "1 while the listeners can publish (connected, not "
                            "blocked by an alarm); 0 while every submission is answered 451.",
                            value=0 if listeners.submitter.unavailable() else 1)
    yield from _inbound_families(listeners)


def _inbound_families(listeners) -> Iterable:
    """Inbound listeners (SPEC §8): reports by what became of them, refusals, list entries."""
    if not listeners.reports:
        return
    from mta.inbound.receiver import OUTCOMES

    reports = CounterMetricFamily("mta_inbound_reports", "Mail taken by the inbound listeners, by outcome: "
                                  "bounced (late results published), complaint, delay and auto_reply (counted "
                                  "only), unmatched (kept in mta.inbound.unmatched).", labels=["outcome"])
    for outcome in OUTCOMES:
        reports.add_metric([outcome], listeners.receiver.counts.get(outcome, 0))
    yield reports
    refused = CounterMetricFamily("mta_inbound_refused", "Mail or connections the inbound listeners refused, "
                                  "by listener and reason (relay: a recipient outside its domains; recipients, "
                                  "size, connections, client: one client's share of them).", labels=["listener", "reason"])
    for r in listeners.reports:
        for why, n in sorted(r.refused.items()):
            refused.add_metric([r.listener.address, why], n)
    yield refused
    added = CounterMetricFamily("mta_inbound_suppressions", "Suppression list entries added from late hard "
                                "bounces and complaints, by reason.", labels=["reason"])
    for reason in ("hard_bounce", "complaint"):
        added.add_metric([reason], listeners.receiver.suppressed.get(reason, 0))
    yield added


def _outcome_families(counts: dict) -> Iterable:
    """Attempts and outcomes by lane and destination label (and bounce class, held reason)."""
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


def _histogram_families(m: Metrics) -> Iterable:
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


def _tls_family(tls) -> CounterMetricFamily:
    family = CounterMetricFamily("mta_tls_policy", "Delivery attempts by the TLS policy they were held to (dane, "
                                 "mta-sts-enforce, mta-sts-testing, opportunistic, required, verified, disabled) and "
                                 "outcome (success: TLS as the policy wants; failure: refused for TLS, or a testing "
                                 "policy not met; plaintext; no-session).", labels=["policy", "outcome"])
    for (policy, outcome), n in sorted((tls.counts if tls is not None else {}).items()):
        family.add_metric([policy, outcome], n)
    return family


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, text, value=value)


def _fill(family: CounterMetricFamily, counts: dict, event: str) -> None:
    per_label: dict[tuple[str, str], int] = {}
    for (lane, label, name), n in counts.items():
        if name.partition(":")[0] == event:
            per_label[(lane, label)] = per_label.get((lane, label), 0) + n
    for labels, n in per_label.items():
        family.add_metric(list(labels), n)


def _destination_gauges() -> dict[str, GaugeMetricFamily]:
    """The per-destination families, empty, in the order they are exported."""
    return {
        "queued": GaugeMetricFamily("mta_destination_queued", "Messages in memory waiting for a connection.",
                                    labels=["destination"]),
        "open": GaugeMetricFamily("mta_connections_open", "SMTP sessions open.", labels=["destination"]),
        "busy": GaugeMetricFamily("mta_connections_in_use", "Connection workers busy with a message or a connect "
                                  "(the rest wait idle for mail).", labels=["destination"]),
        "limit": GaugeMetricFamily("mta_destination_connection_limit", "connection_limit in force (a "
                                   "throttle lowers it while in backoff).", labels=["destination"]),
        "allowed": GaugeMetricFamily("mta_destination_connections_allowed", "Connections the destination may "
                                     "open now: the feedback window, which grows towards connection_limit with "
                                     "successes and halves on pushback.", labels=["destination"]),
        "rate": GaugeMetricFamily("mta_destination_message_rate_limit", "Message rate in force, messages "
                                  "per second (max_message_rate, lowered by a throttle or by what receivers "
                                  "accept).", labels=["destination"]),
        "state": GaugeMetricFamily("mta_destination_state", "1 for the mode a destination is in "
                                   "(normal, backoff, paused); destinations in backoff or paused keep their own "
                                   "label.", labels=["destination", "state"]),
        "reason": GaugeMetricFamily("mta_destination_backoff_info", "A destination in backoff or paused, and why "
                                    "(value: until when, Unix time; 0: until resumed).",
                                    labels=["destination", "state", "reason"]),
        "modes": GaugeMetricFamily("mta_destinations", "Destinations known to this process, by mode.",
                                   labels=["state"]),
    }


def _destination_families(m: Metrics, engine, now: float) -> Iterable:
    gauges = _destination_gauges()
    by_mode = dict.fromkeys(MODES, 0)
    sums = _destination_sums(m, list(engine.destinations.values()), by_mode, gauges["reason"])
    for label, (q, c, b, limit, rate, mode, may_open) in sums.items():
        gauges["allowed"].add_metric([label], may_open)
        gauges["queued"].add_metric([label], q)
        gauges["open"].add_metric([label], c)
        gauges["busy"].add_metric([label], b)
        gauges["limit"].add_metric([label], limit)
        gauges["rate"].add_metric([label], rate)
        if label != OTHER:
            for each in MODES:
                gauges["state"].add_metric([label, each], 1 if each == mode else 0)
    # Operator pauses that no destination carries (a paused domain): shown under the
    # target's name.
    pauses = engine.pauses.active(now)
    for target, until in pauses.items():
        if target in sums and target != OTHER:
            continue
        by_mode["paused"] += 1
        for each in MODES:
            gauges["state"].add_metric([target, each], 1 if each == "paused" else 0)
        gauges["reason"].add_metric([target, "paused", "paused by operator (mta pause)"], until or 0)
    for mode, n in by_mode.items():
        gauges["modes"].add_metric([mode], n)
    yield from gauges.values()


def _destination_sums(m: Metrics, destinations: list, by_mode: dict[str, int],
                      reason: GaugeMetricFamily) -> dict[str, list]:
    """Per destination label: [queued, connected, busy, connection limit, rate, mode, may open],
    from each destination's snapshot (shaper.statistics). Counts `by_mode`, and adds the
    reason of each destination in backoff or paused (up to MAX_STATE_SERIES of them, each
    under its own label) to `reason`."""
    sums: dict[str, list] = {}
    shown = 0
    for d in destinations:
        stats = d.statistics()
        mode = stats.mode
        by_mode[mode] = by_mode.get(mode, 0) + 1
        label = m.labels.current(d.key)
        if mode != "normal" and shown < MAX_STATE_SERIES:
            label = d.key
            shown += 1
            reason.add_metric([d.key, mode, _short(stats.reason)], stats.until or 0)
        row = sums.setdefault(label, [0, 0, 0, 0, 0.0, mode, 0])
        row[0] += stats.queued
        row[1] += stats.connections
        row[2] += stats.in_flight
        row[3] += stats.connection_limit
        row[4] += stats.per_second
        row[6] += stats.connections_allowed
        if label != OTHER:
            row[5] = mode
    return sums


def _budget_families(engine) -> Iterable:
    """The process-wide connection budget (mta.destinations.budget): its size, use, and who waited."""
    budget = engine.budget
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
    gate = engine.control_gate
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
