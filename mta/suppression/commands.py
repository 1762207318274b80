"""`mta suppress add|remove|check|list|import|export` (SPEC §8): the list on the operator's
side. The running MTAs read its changes within seconds; a removal is audited with why."""

from __future__ import annotations

import argparse
import csv
import sys
from datetime import datetime, timezone

from mta.clock import SYSTEM
from mta.suppression.keys import normalize, parse_scope
from mta.suppression.store import REASONS, Store, path_for
from shaper.units import Duration


def add_parser(sub) -> None:
    cmd = sub.add_parser("suppress", help="the suppression list: add, remove, check, list, import, export")
    cmd.add_argument("action", choices=["add", "remove", "check", "list", "import", "export"])
    cmd.add_argument("target", nargs="?", help="an address (add, remove, check), a CSV file (import; - for stdin)")
    cmd.add_argument("-c", "--config", required=True, help="rules file (the list is kept beside it)")
    cmd.add_argument("--scope", default="global", help="global (default), source:NAME or sender_domain:DOMAIN")
    cmd.add_argument("--reason", default="manual", choices=REASONS)
    cmd.add_argument("--expires", help="take the entry off by itself after this long (e.g. 90d)")
    cmd.add_argument("--why", help="remove: why (kept in the audit)")


def run(args: argparse.Namespace) -> int:
    try:
        scope = parse_scope(args.scope)
    except ValueError as exc:
        print(f"--scope: {exc}", file=sys.stderr)
        return 2
    if args.action in ("add", "remove", "check", "import") and not args.target:
        print(f"mta suppress {args.action} needs an address" + (" or a CSV file" if args.action == "import" else ""),
              file=sys.stderr)
        return 2
    store = _store(args.config)
    if store is None:
        return 1
    try:
        return _ACTIONS[args.action](store, args, scope, SYSTEM.wall())
    finally:
        store.close()


def _store(config_path: str):
    """The list the rules file names: PostgreSQL (`suppression.store`), else the SQLite file
    beside it. None (said why) when the file cannot be read."""
    from mta.config import ConfigError, load_config

    try:
        url = load_config(config_path).suppression.store
    except (ConfigError, OSError) as exc:
        print(f"{config_path}: {exc}", file=sys.stderr)
        return None
    if url:
        from mta.suppression.shared import SharedListSync

        return SharedListSync(url)
    return Store(path_for(config_path))


def _add(store: Store, args, scope: str, now: float) -> int:
    expires = now + Duration.parse(args.expires).seconds if args.expires else None
    store.add([{"address": args.target, "scope": scope, "reason": args.reason, "since": now,
                "message_id": None, "expires": expires}], now)
    print(f"suppressed {normalize(args.target)} ({scope}, {args.reason})")
    return 0


def _remove(store: Store, args, scope: str, now: float) -> int:
    why = args.why or "removed by an operator"
    entry = store.remove(args.target, scope, why, now)
    if entry is None:
        print(f"{normalize(args.target)} is not on the list ({scope})", file=sys.stderr)
        return 1
    print(f"removed {entry['address']} ({scope}, was {entry['reason']} since {_when(entry['since'])}): {why}")
    return 0


def _check(store: Store, args, scope: str, now: float) -> int:
    entries = store.find(args.target)
    if not entries:
        print(f"{normalize(args.target)}: not suppressed")
        return 1
    for e in entries:
        print(f"{e['address']}: suppressed ({e['scope']}) for {e['reason']} since {_when(e['since'])}"
              + (f", message {e['message_id']}" if e["message_id"] else "")
              + (f", until {_when(e['expires'])}" if e["expires"] else ""))
    return 0


def _list(store: Store, args, scope: str, now: float) -> int:
    n = 0
    for e in store.entries():
        print(f"{e['address']}\t{e['scope']}\t{e['reason']}\t{_when(e['since'])}\t{e['message_id'] or ''}")
        n += 1
    print(f"{n} entr{'y' if n == 1 else 'ies'}", file=sys.stderr)
    return 0


def _import(store: Store, args, scope: str, now: float) -> int:
    """CSV with a header naming at least `address` (the export's columns); the scope and
    reason of the command for rows without their own."""
    handle = sys.stdin if args.target == "-" else open(args.target, newline="", encoding="utf-8")
    try:
        rows = list(csv.DictReader(handle))
    finally:
        if handle is not sys.stdin:
            handle.close()
    entries, problems = [], []
    for line, row in enumerate(rows, start=2):
        try:
            entries.append(_row(row, scope, args.reason, now))
        except (KeyError, ValueError) as exc:
            problems.append(f"line {line}: {exc}")
    if problems:
        print(f"{args.target}: {len(problems)} problem(s), nothing imported:", *problems, sep="\n  ", file=sys.stderr)
        return 1
    new = store.add(entries, now)
    print(f"imported {len(entries)} entries ({new} new)")
    return 0


def _row(row: dict, scope: str, reason: str, now: float) -> dict:
    address = (row.get("address") or "").strip()
    if "@" not in address:
        raise ValueError(f"not an address: {address!r}")
    row_reason = row.get("reason") or reason
    if row_reason not in REASONS:
        raise ValueError(f"unknown reason {row_reason!r}")
    return {"address": address, "scope": parse_scope(row.get("scope") or scope), "reason": row_reason,
            "since": float(row.get("since") or now), "message_id": row.get("message_id") or None,
            "expires": float(row["expires"]) if row.get("expires") else None}


def _export(store: Store, args, scope: str, now: float) -> int:
    n = store.export_csv(sys.stdout)
    print(f"{n} entries", file=sys.stderr)
    return 0


def _when(t: float | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


_ACTIONS = {"add": _add, "remove": _remove, "check": _check, "list": _list, "import": _import, "export": _export}
