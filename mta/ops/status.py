"""`mta status`: what every MTA on the broker is doing, and why.

The CLI declares a private reply queue, publishes `{"command": "status", "reply_to": ...}`
on the control fanout exchange (`mta.control`, signed when there is a control key), and
collects the JSON snapshots that the running MTAs send back on their publishing
connections, until as many have answered as there are consumers on the bulk lane (one per
MTA) or `wait` seconds have passed. Lane depths and consumer counts come
from passive queue declarations, so they are the broker's own numbers.

A snapshot lists each active destination (anything queued, connected, held, or not in
normal mode): its mode and why (the pattern that matched, since when, until when), the
limits in force, in-flight and queued mail, how much was held (parked in a delay queue),
and the last error.
"""

from __future__ import annotations

from datetime import datetime, timezone

from mta.broker import client
from mta.broker.errors import BrokerUnreachable
from mta.ops import control, detail
from mta.ops.metrics import is_attempt
from mta.broker.topology import LANES, lane_queue

EXTRA_QUEUES = ("mta.results", "mta.invalid", "mta.quarantine", "mta.inbound.unmatched")
MAX_ROWS = 500  # destinations per answer, non-normal and busiest first
KINDS = (("attempts", "attempt"), ("delivered", "delivered"), ("deferred", "deferred"), ("bounced", "bounced"),
         ("expired", "expired"), ("not tried", "not_tried"))


# ---- the MTA's side

def snapshot(engine, target: str | None = None) -> dict:
    """What `mta status` shows of this process; with `target` (a domain or destination key),
    that destination in detail too (mta.ops.detail)."""
    now = engine.clock()
    metrics = engine.metrics
    pauses = engine.pauses.active(now)
    destinations, chosen = [], []
    for d in list(engine.destinations.values()):
        row = _destination(engine, d, now, pauses, always=target is not None and detail.matches(d, target))
        if row is not None:
            destinations.append(row)
            if target is not None and detail.matches(d, target):
                chosen.append(row)
    shown = {row["destination"] for row in destinations}
    for paused, until in pauses.items():
        if paused not in shown:  # a paused domain: its mail is held before it reaches a destination
            row = {"destination": paused, "state": "paused", "reason": _pause_reason(engine, paused),
                   "since": None, "until": until, "limits": None, "in_flight": 0, "queued": 0,
                   "connections": 0, "held": 0, "last_error": None, "rules": []}
            destinations.append(row)
            if target in (paused, paused.partition(":")[2]):
                chosen.append(row)
    destinations.sort(key=lambda r: (r["state"] == "normal", -(r["queued"] + r["in_flight"]), r["destination"]))
    return {
        "destinations_active": len(destinations),
        "instance": metrics.instance,
        "started": metrics.started,
        "now": now,
        "counts": dict(engine.counts),
        "last_minute": metrics.last_minute(now),
        "lanes": _lanes(metrics),
        "destinations": destinations[:MAX_ROWS],
        "budget": _budget(engine),
        "cluster": _cluster(engine),
        "submission": None if engine.listeners is None else engine.listeners.status(),
        "detail": None if target is None else detail.detail(engine, target, chosen),
    }


def _cluster(engine) -> dict | None:
    """This node's view of the cluster (mta.cluster): the store, and every node's heartbeat."""
    cluster = engine.cluster
    if cluster is None:
        return None
    return {"node": cluster.name, "store": "up" if cluster.up else "down", "live": cluster.nodes.live(),
            "nodes": cluster.nodes.seen}


def _budget(engine) -> dict:
    budget = engine.budget
    return {"limit": budget.limit, "in_use": budget.in_use, "waiting": budget.waiting}


def _lanes(metrics) -> dict:
    lanes = {lane: {} for lane in LANES}
    for (lane, _label, event), n in list(metrics.counts.items()):
        _add(lanes.setdefault(lane, {}), event, n)
    return lanes


def _add(row: dict, event: str, n: int) -> None:
    kind = event.partition(":")[0]
    row[kind] = row.get(kind, 0) + n
    if is_attempt(event):
        row["attempt"] = row.get("attempt", 0) + n


def _pause_reason(engine, target: str) -> str:
    """Why a target is in the operator's pause list: a route whose smarthost refused its
    credentials says so (never the credentials), anything else was `mta pause`."""
    return engine.routes.faults.get(target) or "paused by operator (mta pause)"


def _destination(engine, d, now: float, pauses: dict, always: bool = False) -> dict | None:
    """A destination's row, from its snapshot (shaper.statistics) and the operator's pauses;
    None for one idle in normal mode, unless `always`."""
    stats = d.statistics()
    held = engine.metrics.held_by_destination.get(d.key, 0)
    if d.key in pauses and stats.mode != "paused":
        mode, reason, since, until = "paused", _pause_reason(engine, d.key), None, pauses[d.key]
    else:
        mode, reason, since, until = stats.mode, stats.reason, stats.since, stats.until
    if mode == "normal" and not (stats.active or held) and not always:
        return None
    limits = {
        "connection_limit": stats.connection_limit,
        "connections_allowed": stats.connections_allowed,
        "max_message_rate": str(stats.message_rate),
        "message_rate_now": stats.per_second,
        "max_connection_rate": str(stats.connection_rate),
        "max_deliveries_per_connection": stats.deliveries_per_connection,
    }
    return {"destination": d.key, "state": mode, "reason": reason, "since": since, "until": until,
            "limits": limits, "in_flight": stats.in_flight, "queued": stats.queued,
            "connections": stats.connections, "held": held, "last_error": stats.last_error,
            "rules": _rules_of(engine, d)}


def _rules_of(engine, d) -> list[str]:
    """Which rule levels gave this destination its limits (default, providers.X, domains.Y),
    found again by a domain it serves."""
    key = d.key
    domain = d.domain or (key[len("domain:"):] if key.startswith("domain:") else "")
    return list(engine.rules.resolve(domain, d.answer).why) if domain else []


async def answer(engine, command: dict, channel, reply_to: str) -> None:
    """Answer a status request on its reply queue (the publishing connection's `channel`)."""
    target = command.get("destination")
    target = target[:300] if isinstance(target, str) and target else None
    await control.answer(channel, reply_to, {"request": command.get("id"), **snapshot(engine, target)})


# ---- the CLI's side

async def collect(url: str, wait: float = 3.0, key: bytes | None = None, destination: str | None = None) -> dict:
    """Lane depths and consumers from the broker, and one snapshot per MTA that answers
    (the request signed with `key`, when the MTAs require it)."""
    try:
        connection = await client.connect(url)
    except BrokerUnreachable as exc:
        raise BrokerUnreachable(f"cannot reach the broker at {client.redact(url)}: {exc}") from exc
    try:
        queues = {}
        for name in [lane_queue(lane) for lane in LANES] + list(EXTRA_QUEUES):
            queues[name] = await control.queue_numbers(connection, name)
        expected = (queues.get(lane_queue("bulk")) or {}).get("consumers", 0)
        answers = await control.ask(connection, control.command_body("status", destination=destination), key,
                                    expected, wait)
    finally:
        await client.close(connection)
    answers.sort(key=lambda a: a.get("instance", ""))
    return {"queues": queues, "mtas": answers}


def render(report: dict) -> str:
    lines = ["queue                 depth  consumers"]
    for name, numbers in report["queues"].items():
        if numbers is None:
            lines.append(f"  {name:<18} (not declared)")
        else:
            lines.append(f"  {name:<18} {numbers['depth']:>6}  {numbers['consumers']:>9}")
    if not report["mtas"]:
        lines.append("\nno MTA answered (none running on this broker, or they require signed commands and "
                     "--config does not name the control key?)")
    elif len(report["mtas"]) > 1:
        lines.append(f"\n{len(report['mtas'])} MTAs, together in the last 60 s:")
        for lane in ("all", *LANES):
            row = {kind: sum(m["last_minute"].get(lane, {}).get(kind, 0) for m in report["mtas"]) for _, kind in KINDS}
            lines.append(f"  {'all lanes' if lane == 'all' else 'lane ' + lane:<11} " + ", ".join(
                f"{name} {row[kind]}" for name, kind in KINDS))
    lines.extend(_render_cluster(report["mtas"]))
    for mta in report["mtas"]:
        lines.append("")
        lines.extend(_render_mta(mta))
    return "\n".join(lines)


def render_detail(report: dict, target: str) -> str:
    """`mta status DESTINATION`: that destination as each MTA sees it."""
    if not report["mtas"]:
        return "no MTA answered"
    lines = []
    for mta in report["mtas"]:
        lines.append(f"MTA {mta['instance']}:")
        lines.extend(detail.render(mta.get("detail") or [], mta["now"])
                     or [f"  {target}: no such destination here (no mail for it since this MTA started)"])
    return "\n".join(lines)


def _render_cluster(mtas: list[dict]) -> list[str]:
    """The nodes sharing a store (from the freshest heartbeats any node saw), and each
    destination's totals over the MTAs that answered."""
    views = [m["cluster"] for m in mtas if m.get("cluster")]
    if not views:
        return []
    view = max(views, key=lambda v: (v["store"] == "up", len(v["nodes"])))
    down = [v["node"] for v in views if v["store"] != "up"]
    lines = ["", f"cluster: {len(view['nodes'])} node(s) seen, {view['live']} in the last minute"
             + (f"; store DOWN for {', '.join(down)} (each keeps to its share of every limit)" if down else "")]
    for name, info in sorted(view["nodes"].items()):
        lanes = ", ".join(info.get("lanes") or []) or "none"
        lines.append(f"  {name:<24} seen {info.get('ago', '?')}s ago, lanes {lanes}, "
                     f"connections {info.get('connections', 0)}")
    totals: dict[str, list] = {}
    for mta in mtas:
        for d in mta["destinations"]:
            row = totals.setdefault(d["destination"], [0, 0, 0, 0.0, 0])
            row[0] += d["connections"]
            row[1] += d["in_flight"]
            row[2] += d["queued"]
            row[3] += (d["limits"] or {}).get("message_rate_now", 0.0)
            row[4] += 1
    if totals:
        lines.append(f"  destinations across the {len(mtas)} MTA(s) that answered:")
        for key, (connections, in_flight, queued, rate, seen_by) in sorted(totals.items()):
            lines.append(f"    {key}: connections {connections}, in flight {in_flight}, queued {queued}, "
                         f"rate now {rate:.3g}/s (on {seen_by})")
    return lines


def _render_submission(submission: dict | None) -> list[str]:
    """Listeners and sources (SPEC §7): each source's last minute and its total; inbound
    listeners and what their reports became (SPEC §8)."""
    if not submission:
        return []
    listeners = ", ".join(f"{l['address']} ({l['tls']}{', PROXY' if l['proxy_protocol'] else ''}; "
                          f"{l['connections']} connections)" for l in submission["listeners"])
    lines = [f"  listeners: {listeners}; broker {submission['broker']}"] if listeners else []
    for s in submission["sources"]:
        minute = s["last_minute"]
        lines.append(f"    source {s['source']:<16} last 60 s: accepted {minute.get('accepted', 0)}, refused "
                     f"{minute.get('refused', 0)}, failed logins {minute.get('auth_failures', 0)}; "
                     f"accepted since start {s['accepted']} (lane {s['lane']}, auth {s['auth']})")
    unknown = submission.get("unknown") or {}
    if unknown:
        lines.append(f"    no source known  last 60 s: refused {unknown.get('refused', 0)}, "
                     f"failed logins {unknown.get('auth_failures', 0)}")
    for inbound in submission.get("inbound", []):
        refused = ", ".join(f"{why} {n}" for why, n in sorted(inbound["refused"].items())) or "none"
        lines.append(f"  inbound {inbound['address']} ({', '.join(inbound['domains'])}; {inbound['connections']} "
                     f"connections): refused {refused}")
    if submission.get("inbound"):
        reports = ", ".join(f"{k} {n}" for k, n in sorted(submission["reports"].items())) or "none yet"
        added = ", ".join(f"{k} {n}" for k, n in sorted(submission["reports_suppressed"].items())) or "none"
        lines.append(f"    reports since start: {reports}; list entries added: {added}")
    return lines


def _render_mta(mta: dict) -> list[str]:
    now = mta["now"]
    up = duration(now - mta["started"])
    lines = [f"MTA {mta['instance']}  up {up}"]
    lines.append("  since start: " + ", ".join(f"{name} {n}" for name, n in mta["counts"].items()))
    last = mta["last_minute"]
    for lane in ("all", *mta["lanes"]):
        row = last.get(lane, {})
        lines.append(f"  {'all lanes' if lane == 'all' else 'lane ' + lane:<11} last 60 s: " + ", ".join(
            f"{name} {row.get(kind, 0)}" for name, kind in KINDS))
    budget = mta.get("budget")
    if budget:
        lines.append(f"  connections: {budget['in_use']} of {budget['limit']} (process budget), "
                     f"{budget['waiting']} destination(s) waiting for a slot")
    lines.extend(_render_submission(mta.get("submission")))
    if not mta["destinations"]:
        lines.append("  no active destinations")
    elif mta["destinations_active"] > len(mta["destinations"]):
        lines.append(f"  {mta['destinations_active']} active destinations, the first {len(mta['destinations'])} shown")
    for d in mta["destinations"]:
        head = f"  {d['destination']}  {d['state']}"
        if d["state"] != "normal":
            head += f": {d['reason']}" if d["reason"] else ""
            if d["since"]:
                head += f", since {_clock(d['since'])}"
            head += f", until {_clock(d['until'])} (in {duration(d['until'] - now)})" if d["until"] else ", until resumed"
        lines.append(head)
        limits = d["limits"]
        if limits:
            lines.append(f"      limits: {limits['connections_allowed']}/{limits['connection_limit']} connections, "
                         f"{limits['max_message_rate']} messages (now {limits['message_rate_now']:.3g}/s), "
                         f"{limits['max_connection_rate']} connects, "
                         f"{limits['max_deliveries_per_connection']} per connection"
                         + (f" ({' + '.join(d['rules'])})" if d["rules"] else ""))
        lines.append(f"      in flight {d['in_flight']}, queued {d['queued']}, connections {d['connections']}, "
                     f"held {d['held']}" + (f", last error: {d['last_error']}" if d["last_error"] else ""))
    return lines


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%H:%M:%SZ")


def duration(seconds: float) -> str:
    """90s, 15m, 2h05m: how long, for a person."""
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
