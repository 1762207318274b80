"""`mta trace ID|RECIPIENT|--tag T [--since D]` and `mta stuck [--older D]` (SPEC §9): the
event store beside the rules file, read by an operator.

    $ mta trace order-10042 -c mta.yaml
    order-10042 -> jane@example.org (lane single, tags shop, source webshop)
      2026-12-02 10:00:00.012  accepted
      2026-12-02 10:00:00.140  deferred    attempt 1  rcpt  mx1.example.org [192.0.2.10]  451 4.7.1 greylisted, try later
      2026-12-02 10:00:02.151  held        not tried: paused; back in 15s
      2026-12-02 10:00:17.212  delivered   attempt 2  message  mx1.example.org [192.0.2.10]  250 2.0.0 Ok: queued
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone

import orjson

from mta.clock import SYSTEM
from mta.tracking.store import path_for
from shaper.units import Duration


def add_parsers(sub) -> None:
    trace = sub.add_parser("trace", help="a message's history: by id, recipient or tag")
    trace.add_argument("target", nargs="?", help="a message id, or a recipient address")
    trace.add_argument("-c", "--config", required=True, help="rules file (the event store is kept beside it)")
    trace.add_argument("--tag", help="every message with this tag")
    trace.add_argument("--since", default="30d", help="look this far back (default 30d)")
    trace.add_argument("--limit", type=int, default=1000, help="events shown at most (default 1000)")
    stuck = sub.add_parser("stuck", help="messages accepted and silent for too long")
    stuck.add_argument("-c", "--config", required=True, help="rules file (the event store is kept beside it)")
    stuck.add_argument("--older", help="silent for longer than this (default: tracking.stuck_after)")


def _store(config_path: str):
    """The event store the rules file names: PostgreSQL (`tracking.store`), else the SQLite
    file beside it; None (said why) when the file cannot be read."""
    from mta.config import ConfigError, load_config
    from mta.tracking import open_reader

    try:
        config = load_config(config_path)
    except (ConfigError, OSError) as exc:
        print(f"{config_path}: {exc}", file=sys.stderr)
        return None
    return open_reader(config.tracking, path_for(config_path))


def trace(args: argparse.Namespace) -> int:
    if not args.target and not args.tag:
        print("mta trace needs a message id, a recipient or --tag", file=sys.stderr)
        return 2
    try:
        since = SYSTEM.wall() - Duration.parse(args.since).seconds
    except ValueError as exc:
        print(f"--since: {exc}", file=sys.stderr)
        return 2
    store = _store(args.config)
    if store is None:
        return 1
    try:
        if args.tag:
            events = store.by_tag(args.tag, since, args.limit)
        elif "@" in args.target:
            events = store.by_recipient(args.target, since, args.limit) or store.by_id(args.target, since, args.limit)
        else:
            events = store.by_id(args.target, since, args.limit)
    finally:
        store.close()
    if not events:
        print(f"no events for {args.tag or args.target} in the last {args.since}", file=sys.stderr)
        return 1
    print(render(events))
    return 0


def render(events: list[dict]) -> str:
    """Events grouped by message, in time order within each."""
    out = []
    for message_id, recipient, about, mine in heading(events):
        out.append(f"{message_id} -> {recipient}" + (f" ({about})" if about else ""))
        out.extend(f"  {_line(e)}" for e in mine)
    return "\n".join(out)


def _line(e: dict) -> str:
    c = columns(e)
    parts = [c["when"], f"{c['status']:<10}"]
    parts.extend(x for x in (c["attempt"], c["phase"], c["where"], c["reply"], c["notes"]) if x)
    return "  ".join(parts).rstrip()


def columns(e: dict) -> dict[str, str]:
    """One event as `mta trace` shows it, column by column (the console shows the same):
    when, status, attempt, phase, where (MX and address), reply, notes; empty when absent."""
    attempt = f"attempt {e['attempts']}" if e["status"] not in ("accepted", "held") and e["attempts"] else ""
    where = e["mx"] + (f" [{e['ip']}]" if e["ip"] else "") if e["mx"] else ""
    description = e["description"] or ""
    enhanced = e["enhanced"] if e["enhanced"] and not description.startswith(e["enhanced"]) else None
    reply = " ".join(str(x) for x in (e["code"], enhanced) if x)
    notes = []
    detail = orjson.loads(e["detail"]) if e["detail"] else {}
    if "tls" in detail:
        notes.append(f"TLS {detail['tls']}" if detail["tls"] else "no TLS")
    if detail.get("late"):
        notes.append("(late)")
    if "suppression" in detail:
        s = detail["suppression"]
        notes.append(f"on the suppression list ({s.get('reason')}, message {s.get('message_id')})")
    if "complaint" in detail:
        notes.append(f"feedback {detail['complaint'].get('feedback_type')}")
    return {"when": _when(e["time"]), "status": e["status"], "attempt": attempt, "phase": e["phase"] or "",
            "where": where, "reply": " ".join(x for x in (reply, description) if x), "notes": "  ".join(notes)}


def heading(events: list[dict]) -> list[tuple[str, str, str, list[dict]]]:
    """Events grouped by message, in time order within each: (id, recipient, about, events)."""
    by_message: dict[tuple, list[dict]] = {}
    for e in events:
        by_message.setdefault((e["id"], e["recipient"]), []).append(e)
    out = []
    for (message_id, recipient), mine in by_message.items():
        first = mine[0]
        about = [f"lane {first['lane']}"] if first["lane"] else []
        if first["tags"]:
            about.append(f"tags {first['tags']}")
        if first["source"]:
            about.append(f"source {first['source']}")
        out.append((message_id, recipient, ", ".join(about), mine))
    return out


def stuck(args: argparse.Namespace) -> int:
    from mta.config import load_config

    store = _store(args.config)
    if store is None:
        return 1
    try:
        older = Duration.parse(args.older).seconds if args.older else load_config(args.config).tracking.stuck_after
    except ValueError as exc:
        print(f"--older: {exc}", file=sys.stderr)
        return 2
    now = SYSTEM.wall()
    try:
        found = store.stuck(older, now)
    finally:
        store.close()
    for s in found:
        print(f"{s['id']} -> {s['recipient']}: {s['status']} {_ago(now - s['last'])} ago, accepted "
              f"{_when(s['first'])}" + (f": {s['description']}" if s["description"] else ""))
    print(f"{len(found)} message(s) silent for longer than {_ago(older)}", file=sys.stderr)
    return 0 if not found else 1


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _ago(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f}d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds / 60:.0f}m"
    return f"{seconds:.0f}s"
