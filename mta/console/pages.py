"""The console's pages as HTML, from the same data the CLI shows: a status snapshot
(mta.ops.status.snapshot), events from the event store, stuck messages. Pure: no I/O, no
clock (the snapshot carries its own `now`).

Everything that came from outside (recipients, ids, replies, destination keys, reasons) is
attacker-controlled text and goes through `esc` once, where it is put into the page; URLs
carry it percent-encoded. One inline script sorts tables by a column (click its heading)
and reloads the live pages every 10 s; one inline style. Both are allowed by hash in the
Content-Security-Policy (mta.console.app), nothing else is.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timezone
from html import escape
from urllib.parse import quote

from mta.ops.status import KINDS, duration
from mta.tracking.commands import columns, heading

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:8px 16px;display:flex;gap:18px;align-items:baseline}
header a{color:#cfe0ff;text-decoration:none}header a.here{color:#fff;font-weight:600}
header b{margin-right:12px}main{padding:12px 16px}h1{font-size:18px;margin:4px 0 10px}
h2{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;background:#fff;margin-bottom:10px}
th,td{border:1px solid #d5d9e0;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#e9edf3}th[data-sort]{cursor:pointer}td.n{text-align:right;font-variant-numeric:tabular-nums}
.paused{color:#a33;font-weight:600}.backoff{color:#b60;font-weight:600}.normal{color:#286}
.note{color:#556}form{margin:8px 0}input{font:inherit}.error{color:#a33}code{font-size:13px}
"""

SCRIPT = """
document.querySelectorAll("th[data-sort]").forEach(function(th){th.title="sort by "+th.textContent;
th.addEventListener("click",function(){
var t=th.closest("table"),b=t.tBodies[0],i=th.cellIndex,d=th.dataset.dir==="asc"?-1:1;th.dataset.dir=d>0?"asc":"desc";
var rows=Array.prototype.slice.call(b.rows),num=th.dataset.sort==="n";
rows.sort(function(x,y){var a=x.cells[i].dataset.v||x.cells[i].textContent,c=y.cells[i].dataset.v||y.cells[i].textContent;
if(num){a=parseFloat(a)||0;c=parseFloat(c)||0;return(a-c)*d}return a.localeCompare(c)*d});
rows.forEach(function(r){b.appendChild(r)})})});
if(document.body.dataset.refresh){setTimeout(function(){location.reload()},10000)}
"""


def _digest(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


# What the Content-Security-Policy allows: this script and this style, nothing else.
CSP = (f"default-src 'none'; script-src '{_digest(SCRIPT)}'; style-src '{_digest(STYLE)}'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

NAV = (("", "Overview"), ("destinations", "Destinations"), ("message", "Messages"), ("pauses", "Pauses"),
       ("stuck", "Stuck"))


def esc(value) -> str:
    return escape("" if value is None else str(value), quote=True)


def url(page: str, **query: str) -> str:
    path = "/console" + (f"/{page}" if page else "")
    if query:
        path += "?" + "&".join(f"{k}={quote(str(v), safe='')}" for k, v in query.items())
    return path


def page(title: str, here: str, body: str, snapshot_of: str = "", *, refresh: bool = False) -> str:
    links = "".join(f'<a href="{url(p)}"{" class=here" if p == here else ""}>{name}</a>' for p, name in NAV)
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{esc(title)} · mta console</title>"
            f"<style>{STYLE}</style></head><body{' data-refresh=1' if refresh else ''}>"
            f"<header><b>mta {esc(snapshot_of)}</b>{links}</header><main><h1>{esc(title)}</h1>{body}</main>"
            f"<script>{SCRIPT}</script></body></html>")


def clock(t: float | None) -> str:
    return "" if t is None else datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _table(head: list[tuple[str, str]], rows: list[str], table_id: str = "") -> str:
    """`head`: (title, sort kind: "t" text, "n" number, "" none)."""
    ths = "".join(f'<th{f" data-sort={kind}" if kind else ""}>{esc(title)}</th>' for title, kind in head)
    return f'<table{f" id={table_id}" if table_id else ""}><thead><tr>{ths}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _n(value) -> str:
    return f'<td class=n>{esc(value)}</td>'


# ---- overview

def overview(snap: dict, pauses: int, stuck: int | None) -> str:
    now = snap["now"]
    counts = snap["counts"]
    last = snap["last_minute"]
    head = [("", ""), ("processed", "")] + [(name, "") for name, _ in KINDS]
    rows = []
    for lane in ("all", *snap["lanes"]):
        row = last.get(lane, {})
        processed = counts.get("consumed", 0) if lane == "all" else ""
        rows.append(f"<tr><th>{'all lanes' if lane == 'all' else 'lane ' + esc(lane)}</th>"
                    + (_n(processed) if lane == "all" else "<td></td>")
                    + "".join(_n(row.get(kind, 0)) for _, kind in KINDS) + "</tr>")
    since = []
    for lane, row in snap["lanes"].items():
        since.append(f"<tr><th>lane {esc(lane)}</th><td></td>" + "".join(_n(row.get(kind, 0)) for _, kind in KINDS)
                     + "</tr>")
    budget = snap.get("budget") or {}
    facts = [f"up {duration(now - snap['started'])} (since {clock(snap['started'])})",
             f"connections {budget.get('in_use', 0)} of {budget.get('limit', 0)}"
             + (f", {budget['waiting']} destination(s) waiting for a slot" if budget.get("waiting") else ""),
             f'<a href="{url("destinations")}">{snap["destinations_active"]} active destination(s)</a>',
             f'<a href="{url("pauses")}">{pauses} pause(s)</a>',
             f'<a href="{url("stuck")}">{"?" if stuck is None else stuck} stuck message(s)</a>']
    body = ("<p>" + " · ".join(facts) + "</p><h2>Last 60 seconds</h2>"
            + _table(head, rows, "last-minute")
            + "<p class=note>processed: messages consumed from the lanes since start (held mail coming back "
              "counts again); the other columns: outcomes of the last 60 s.</p>"
            + "<h2>Since start</h2>" + _table(head, [f"<tr><th>all lanes</th>{_n(counts.get('consumed', 0))}"
                                                      + "".join(_n(sum(r.get(kind, 0) for r in snap['lanes'].values()))
                                                                for _, kind in KINDS) + "</tr>"] + since,
                                                 "since-start")
            + "<p class=note>" + esc(", ".join(f"{k} {v}" for k, v in counts.items())) + "</p>")
    return page("Overview", "", body, snap["instance"], refresh=True)


# ---- destinations

def _state(d: dict) -> str:
    return f'<td class="{esc(d["state"])}">{esc(d["state"])}</td>'


def _until(d: dict, now: float) -> str:
    if d["state"] == "normal":
        return ""
    if not d["until"]:
        return "until resumed"
    return f"{clock(d['until'])} (in {duration(d['until'] - now)})"


def destinations(snap: dict) -> str:
    now = snap["now"]
    head = [("destination", "t"), ("state", "t"), ("reason", "t"), ("until", "t"), ("connections", "n"),
            ("in flight", "n"), ("queued", "n"), ("held", "n"), ("rate now /s", "n"), ("max rate", "t"),
            ("last error", "t")]
    rows = []
    for d in snap["destinations"]:
        limits = d["limits"] or {}
        rate = limits.get("message_rate_now")
        rows.append(
            f'<tr><td><a href="{esc(url("destination", key=d["destination"]))}">{esc(d["destination"])}</a></td>'
            + _state(d) + f"<td>{esc(d['reason'])}</td><td data-v=\"{esc(d['until'] or '')}\">{esc(_until(d, now))}</td>"
            + _n(d["connections"]) + _n(d["in_flight"]) + _n(d["queued"]) + _n(d["held"])
            + _n("" if rate is None else f"{rate:.3g}") + f"<td>{esc(limits.get('max_message_rate', ''))}</td>"
            + f"<td>{esc(d['last_error'])}</td></tr>")
    shown = len(snap["destinations"])
    note = (f"<p class=note>{snap['destinations_active']} active, the first {shown} shown.</p>"
            if snap["destinations_active"] > shown else "")
    body = ("<p class=note>Destinations with mail queued, connected or held, or not in normal mode. "
            "Click a heading to sort.</p>" + note
            + (_table(head, rows, "destinations") if rows else "<p>No active destinations.</p>"))
    return page("Destinations", "destinations", body, snap["instance"], refresh=True)


def destination(snap: dict, key: str) -> str | None:
    """One destination's detail, with why its mail waits and its last replies that were not
    2xx (mta.ops.detail); None when this MTA knows nothing of it."""
    found = next((d for d in snap.get("detail") or [] if d["destination"] == key), None)
    found = found or next((d for d in snap["destinations"] if d["destination"] == key), None)
    if found is None:
        return None
    d, now = found, snap["now"]
    facts = [("state", f'<span class="{esc(d["state"])}">{esc(d["state"])}</span>'), ("reason", esc(d["reason"])),
             ("since", esc(clock(d["since"]))), ("until", esc(_until(d, now))),
             ("connections", esc(d["connections"])), ("in flight", esc(d["in_flight"])),
             ("queued", esc(d["queued"])), ("held (not tried, back to the broker)", esc(d["held"])),
             ("last error", esc(d["last_error"])), ("rules", esc(" + ".join(d["rules"])))]
    limits = d["limits"] or {}
    facts += [(f"limit: {name.replace('_', ' ')}", esc(value)) for name, value in limits.items()]
    if d.get("serves"):
        facts.insert(0, ("serves", esc(d["serves"])))
    if d.get("waits"):
        facts.insert(3, ("mail waits", esc(d["waits"])))
    rows = "".join(f"<tr><th>{esc(name)}</th><td>{value}</td></tr>" for name, value in facts)
    body = f"<table id=detail><tbody>{rows}</tbody></table>"
    replies = d.get("replies") or []
    body += "<h2>Last replies that were not 2xx</h2>"
    if replies:
        head = [("time (UTC)", ""), ("phase", ""), ("MX [address]", ""), ("code", ""), ("reply", "")]
        body += _table(head, [
            "<tr class=reply>" + "".join(f"<td>{esc(v)}</td>" for v in (
                clock(r["time"]), r["phase"], (r["mx"] or "") + (f" [{r['ip']}]" if r["ip"] else ""),
                "" if r["code"] is None else r["code"], r["text"])) + "</tr>" for r in replies])
    else:
        body += "<p>None since this MTA started.</p>"
    return page(f"Destination {key}", "destinations", body, snap["instance"], refresh=True)


# ---- messages

def lookup_form(query: str) -> str:
    return (f'<form method=get action="{url("message")}"><label>Message id or recipient '
            f'<input name=q size=50 value="{esc(query)}" autofocus></label> <button>Find</button></form>')


def messages(query: str, events: list[dict], since_days: int, instance: str = "") -> str:
    body = lookup_form(query)
    if query and not events:
        body += f"<p>No events for <code>{esc(query)}</code> in the last {since_days} days.</p>"
    head = [("time (UTC)", ""), ("status", ""), ("attempt", ""), ("phase", ""), ("MX [address]", ""), ("reply", ""),
            ("notes", "")]
    for message_id, recipient, about, mine in heading(events):
        body += (f"<h2 class=message><code>{esc(message_id)}</code> → <code>{esc(recipient)}</code>"
                 + (f" <span class=note>({esc(about)})</span>" if about else "") + "</h2>")
        rows = []
        for e in mine:
            c = columns(e)
            rows.append(f'<tr class="event {esc(c["status"])}">' + "".join(
                f"<td>{esc(c[k])}</td>" for k in ("when", "status", "attempt", "phase", "where", "reply", "notes"))
                + "</tr>")
        body += _table(head, rows)
    return page("Message lookup", "message", body, instance)


# ---- pauses and stuck mail

def pauses(snap: dict, allow_pause: bool, csrf: str) -> str:
    now = snap["now"]
    paused = [d for d in snap["destinations"] if d["state"] == "paused"]
    head = [("target", "t"), ("reason", "t"), ("until", "t"), ("held", "n")] + ([("", "")] if allow_pause else [])
    rows = []
    for d in paused:
        resume = (f'<td><form method=post action="{url("resume")}"><input type=hidden name=csrf value="{esc(csrf)}">'
                  f'<input type=hidden name=target value="{esc(d["destination"])}"><button>Resume</button></form></td>'
                  if allow_pause else "")
        rows.append(f'<tr><td><a href="{esc(url("destination", key=d["destination"]))}">{esc(d["destination"])}</a>'
                    f"</td><td>{esc(d['reason'])}</td><td>{esc(_until(d, now))}</td>{_n(d['held'])}{resume}</tr>")
    body = _table(head, rows, "pauses") if rows else "<p>No active pauses.</p>"
    if allow_pause:
        body += (f'<h2>Pause</h2><form method=post action="{url("pause")}"><input type=hidden name=csrf '
                 f'value="{esc(csrf)}"><label>Domain or destination <input name=target size=40 required></label> '
                 f'<label>for <input name=duration size=6 placeholder="30m"></label> <button>Pause</button></form>'
                 "<p class=note>Pause and resume go to every MTA on the broker, as <code>mta pause</code> and "
                 "<code>mta resume</code> do.</p>")
    else:
        body += "<p class=note>Read-only: <code>console.allow_pause: true</code> adds pause and resume here.</p>"
    return page("Active pauses", "pauses", body, snap["instance"], refresh=True)


def stuck(found: list[dict], older: float, now: float, instance: str = "") -> str:
    head = [("id", "t"), ("recipient", "t"), ("last status", "t"), ("silent for", "n"), ("accepted", "t"),
            ("why", "t")]
    rows = [f'<tr><td><a href="{esc(url("message", q=s["id"]))}">{esc(s["id"])}</a></td><td>{esc(s["recipient"])}'
            f'</td><td>{esc(s["status"])}</td><td class=n data-v="{now - s["last"]:.0f}">{duration(now - s["last"])}'
            f"</td><td>{esc(clock(s['first']))}</td><td>{esc(s['description'])}</td></tr>" for s in found]
    body = (f"<p class=note>Messages accepted, not finished, and without an event for longer than "
            f"{duration(older)} (<code>tracking.stuck_after</code>).</p>"
            + (_table(head, rows, "stuck") if rows else "<p>No stuck messages.</p>"))
    return page("Stuck messages", "stuck", body, instance, refresh=True)


def message_page(title: str, text: str, instance: str = "", *, back: str = "") -> str:
    """A short page that says one thing (an error, what a pause did)."""
    link = f'<p><a href="{esc(back)}">back</a></p>' if back else ""
    return page(title, "", f"<p>{esc(text)}</p>{link}", instance)
