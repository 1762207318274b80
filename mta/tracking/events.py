"""What the event store keeps of each event (SPEC §9), pure: a result document, or what the
engine itself saw (a message accepted, held), becomes one row.

A row: time, id, recipient, status, final, attempts, lane, phase, mx, ip, code, enhanced,
description, tags, source, and `detail` (JSON: the bounce class, `late`, the suppression
entry, the complaint, why held and until when). The time of a result is its last
attempt's; of the engine's own events, when it saw them.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

COLUMNS = ("time", "id", "recipient", "status", "final", "attempts", "lane", "phase", "mx", "ip", "code",
           "enhanced", "description", "tags", "source", "detail")
DETAIL_FIELDS = ("bounce", "late", "suppression", "complaint", "report", "results_omitted")
MERGED = '{"accepted":'  # how the detail of a final row that carries its accepted event begins
MAX_TEXT = 2000  # octets of any text kept (descriptions are cut at 512 by the engine already)
# What the engine hands the tracker per message instead of a row (the row is built where
# the store is written, mta.tracking.tracker): a result settled, a message accepted.
SETTLED = "settled"  # (SETTLED, time, accepted at or None, id, recipient, status, bounce, lane, result JSON)
ACCEPTED = "accepted"  # (ACCEPTED, time, id, recipient, attempts, lane, tags, source)


def _text(value: Any, limit: int = 512) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text[:limit]


def _tags(value: Any) -> str | None:
    if isinstance(value, (list, tuple)) and value:
        return ",".join(str(t)[:100] for t in value[:20])
    return None


def from_result(doc: dict, now: float) -> tuple:
    """The row of one result (SPEC §2) as published on mta.results, at `now` (when the
    tracker read it: milliseconds after the attempt, whose own time is in the result; not
    parsed, per event, for that)."""
    attempts = doc.get("results")
    last = attempts[-1] if isinstance(attempts, list) and attempts and isinstance(attempts[-1], dict) else {}
    detail = {k: doc[k] for k in DETAIL_FIELDS if k in doc}
    if "tls" in last:  # the session of the last attempt: its cipher, or none
        detail["tls"] = _text(last.get("cipher"), 100) if last.get("tls") else None
    code = last.get("code")
    return (now, _text(doc.get("id"), 300) or "", _text(doc.get("recipient"), 300),
            _text(doc.get("status"), 20) or "?", 1 if doc.get("final") else 0,
            doc.get("attempts") if isinstance(doc.get("attempts"), int) else None,
            _text(last.get("lane") or doc.get("lane"), 20), _text(last.get("phase"), 20), _text(last.get("mx"), 255),
            _text(last.get("ip"), 64), code if isinstance(code, int) else None, _text(last.get("enhanced"), 20),
            _text(last.get("description")), _tags(doc.get("tags")), _text(doc.get("source"), 100),
            orjson.dumps(detail).decode()[:MAX_TEXT] if detail else None)


def built(batch: list[tuple]) -> list[tuple]:
    """The rows of a batch as the tracker hands it over: rows, and the facts of results
    settled and messages accepted, whose rows are built here, in the writer (its process,
    the store's thread, or PostgreSQL's turn on the loop) and not per message in the engine."""
    out = []
    for entry in batch:
        kind = entry[0]
        if kind == SETTLED:
            try:
                out.append(from_settled(entry))
            except (msgspec.DecodeError, TypeError, ValueError):  # a result it cannot read: the event still lands,
                out.append(from_settled(entry, readable=False))  # not the whole batch refused for ever after
        else:
            out.append(from_accepted(entry) if kind == ACCEPTED else entry)
    return out


class _Settled(msgspec.Struct):
    """What a row takes from a published result; its other fields are skipped unread."""
    attempts: Any = None
    tags: Any = None
    source: Any = None
    suppression: Any = None
    results: Any = None


_read_settled = msgspec.json.Decoder(_Settled).decode  # an integer beyond 64 bits stays one


def from_settled(entry: tuple, readable: bool = True) -> tuple:
    """The row of a result the engine settled, from its document as published
    (mta.settle.results.result_doc) and the facts beside it that are the engine's, not
    echoed from the producer's fields: the status, the bounce class, the lane. With when it
    was accepted, the merged row (`merged`) in one go."""
    _, now, accepted, message_id, recipient, status, bounce, lane, result = entry
    doc = _read_settled(result) if readable else _Settled()
    history = doc.results
    last = history[-1] if isinstance(history, list) and history and isinstance(history[-1], dict) else {}
    detail = {} if accepted is None else {"accepted": accepted}  # first: the row begins with MERGED
    if bounce is not None:
        detail["bounce"] = bounce
    if status == "suppressed" and doc.suppression is not None:
        detail["suppression"] = doc.suppression
    if "tls" in last:
        detail["tls"] = _text(last.get("cipher"), 100) if last.get("tls") else None
    code, source, attempts = last.get("code"), doc.source, doc.attempts
    return (now, message_id, recipient, status, 1, attempts if isinstance(attempts, int) else None, lane,
            last.get("phase"), last.get("mx"), last.get("ip"), code if isinstance(code, int) else None,
            last.get("enhanced"), _text(last.get("description")), _tags(doc.tags),
            source if isinstance(source, str) else None, orjson.dumps(detail).decode() if detail else None)


def from_accepted(entry: tuple) -> tuple:
    _, now, message_id, recipient, attempts, lane, tags, source = entry
    return (now, message_id, recipient, "accepted", 0, attempts, lane, None, None, None, None, None, None,
            _tags(tags), source if isinstance(source, str) else None, None)


def from_job(job, status: str, bounce: str | None, now: float) -> tuple:
    """The row of a result the engine just settled (final or deferred): what its document
    says (mta.settle.results.result_doc), read from the job itself, not from JSON."""
    last = job.history[-1] if job.history else {}
    detail = {}
    if bounce is not None:
        detail["bounce"] = bounce
    suppression = job.doc.get("suppression")
    if status == "suppressed" and suppression is not None:
        detail["suppression"] = suppression
    if "tls" in last:
        detail["tls"] = _text(last.get("cipher"), 100) if last.get("tls") else None
    code, source = last.get("code"), job.doc.get("source")
    return (now, str(job.id), job.recipient.text, status, 0 if status == "deferred" else 1, job.attempts,
            job.lane, last.get("phase"), last.get("mx"), last.get("ip"), code if isinstance(code, int) else None,
            last.get("enhanced"), _text(last.get("description")), _tags(job.tags),
            source if isinstance(source, str) else None, orjson.dumps(detail).decode() if detail else None)


def local(job, status: str, now: float, description: str | None = None, detail: dict | None = None, *,
          attempts: int | None = None) -> tuple:
    """The row of something the engine saw itself: `accepted` (consumed, valid, about to be
    routed), `held` (not tried: back to the broker for a while, and why)."""
    source = job.doc.get("source")
    return (now, str(job.id), job.recipient.text, status, 0, job.attempts if attempts is None else attempts, job.lane,
            None, None, None, None, None, description, _tags(job.tags), source if isinstance(source, str) else None,
            orjson.dumps(detail).decode() if detail else None)


def merged(accepted: float, final: tuple) -> tuple:
    """A message accepted and finished within a second, as one row: its final, whose detail
    begins with when it was accepted (MERGED; `expand` gives the accepted event back). Half
    the rows and index entries for most messages."""
    detail = final[15]
    head = f'{MERGED}{accepted!r}'
    return final[:15] + (head + ("," + detail[1:] if detail else "}"),)


def is_merged(row: tuple) -> bool:
    return bool(row[15]) and row[15].startswith(MERGED)


def expand(found: list[dict]) -> list[dict]:
    """Events as read from a store: a merged row becomes its accepted event and its final."""
    out: list[dict] = []
    for e in found:
        if e["detail"] and e["detail"].startswith(MERGED):
            detail = orjson.loads(e["detail"])
            accepted = dict.fromkeys(COLUMNS)
            accepted.update(time=detail.pop("accepted"), id=e["id"], recipient=e["recipient"], status="accepted",
                            final=0, attempts=0, lane=e["lane"], tags=e["tags"], source=e["source"])
            out.append(accepted)
            e = {**e, "detail": orjson.dumps(detail).decode() if detail else None}
        out.append(e)
    out.sort(key=lambda e: e["time"])
    return out
