"""One destination in detail (SPEC §9: `mta status DESTINATION`): what `mta status` shows of
it, and why its mail waits, until when, and the last ten replies that were not 2xx, each with
its time and host. Asked by a domain (`example.org`: every destination serving it) or a key
(`mx:mx1.example.org`, `provider:google`)."""

from __future__ import annotations

from datetime import datetime, timezone

from mta.tls.apply import base_key


def matches(d, target: str) -> bool:
    base = base_key(d.key)  # a TLS policy's own destination answers to the key it comes from
    return target in (d.key, d.domain, d.key.partition(":")[2], base, base.partition(":")[2])


def detail(engine, target: str, rows: list[dict]) -> list[dict]:
    """`rows`: the destinations' status rows (mta.ops.status) that match `target`, any state."""
    out = []
    by_key = {d.key: d for d in list(engine.destinations.values())}
    for row in rows:
        d = by_key.get(row["destination"])
        extra = {"replies": engine.outcomes.replies.of(row["destination"])}
        if d is not None:
            stats = d.statistics()
            extra.update(serves=d.domain, waits=stats.waits, workers=stats.workers, idle=stats.idle,
                         unreachable_since=stats.unreachable_since)
        out.append({**row, **extra})
    if not out:  # not in memory (idle and forgotten): what is remembered of it
        for key in (target, f"domain:{target}"):
            replies = engine.outcomes.replies.of(key)
            if replies:
                out.append({"destination": key, "state": "idle", "reason": "", "since": None, "until": None,
                            "limits": None, "in_flight": 0, "queued": 0, "connections": 0, "held": 0,
                            "last_error": None, "rules": [], "replies": replies})
    return out


def render(rows: list[dict], now: float) -> list[str]:
    lines = []
    for d in rows:
        head = f"  destination {d['destination']}" + (f" (serves {d['serves']})" if d.get("serves") else "")
        state = d["state"] + (f": {d['reason']}" if d["reason"] else "")
        if d["until"]:
            state += f", until {_clock(d['until'])} (in {max(0, d['until'] - now):.0f}s)"
        lines.append(f"{head}: {state}")
        if d.get("waits"):
            lines.append(f"    mail waits: {d['waits']}")
        limits = d["limits"]
        if limits:
            lines.append(f"    connections {d['connections']} open ({d.get('idle', 0)} idle) of "
                         f"{limits['connections_allowed']} allowed now (limit {limits['connection_limit']}); "
                         f"messages {limits['max_message_rate']} (now {limits['message_rate_now']:.3g}/s); "
                         f"connects {limits['max_connection_rate']}; {limits['max_deliveries_per_connection']} "
                         "per connection" + (f"  ({' + '.join(d['rules'])})" if d["rules"] else ""))
        lines.append(f"    in flight {d['in_flight']}, queued {d['queued']}, held {d['held']}"
                     + (f", unreachable since {_clock(d['unreachable_since'])}" if d.get("unreachable_since") else ""))
        if d["replies"]:
            lines.append("    last replies that were not 2xx, newest first:")
            for r in d["replies"]:
                host = (r["mx"] or "") + (f" [{r['ip']}]" if r["ip"] else "")
                lines.append(f"      {_clock(r['time'])}  {r['phase']:<8} {host}  "
                             f"{r['code'] if r['code'] is not None else '-'} {r['text']}")
        else:
            lines.append("    no reply other than 2xx since this MTA started")
    return lines


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
