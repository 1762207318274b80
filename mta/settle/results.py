"""Result documents: what a producer reads back on `mta.results`, and what a retry copy
carries in its headers.

What a retry copy carries stays well below the broker's frame size (131,072 octets by
default): an attempt keeps at most 512 octets of the reply text, and the copy carries the
last 10 attempts; `attempts` keeps the true count and a result says in `results_omitted`
how many earlier attempts it does not list.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

import msgspec
import orjson

from mta.broker.publish import Unencodable, header_table
from mta.intake.message import H_ATTEMPTS, H_FIRST, H_ID, H_RESULTS, InvalidMessage, Job, parse_json

# Per attempt, the octets of reply text kept (a receiver may answer with 64 KB), and the
# attempts a retry copy carries: 10 entries of at most ~4 KB of JSON each (text, MX name,
# escapes) keep its header far below the broker's 128 KB frame, whatever the receivers said.
DESCRIPTION_MAX = 512
HISTORY_KEPT = 10


_second: list = [None, ""]  # the last whole second formatted: one datetime per second, not per result


def rfc3339(t: float) -> str:
    """UTC with milliseconds (truncated, as isoformat does): 2026-11-23T12:00:00.123Z"""
    seconds = math.floor(t)
    micros = round((t - seconds) * 1e6)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, 0
    if _second[0] != seconds:
        _second[0] = seconds
        _second[1] = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{_second[1]}.{micros // 1000:03d}Z"


def result_doc(job: Job, status: str, bounce: str | None = None) -> dict[str, Any]:
    """The result of `job`: the producer's fields (without the message) and the outcome."""
    out: dict[str, Any] = dict(job.doc)  # a copy and two pops: no comprehension per result
    out.pop("mime", None)
    out.pop("mime_b64", None)
    if "id" not in out:  # the producer's id goes back as given: 9007199254740993 stays a number
        out["id"] = job.id
    out["status"] = status
    out["final"] = status != "deferred"
    out["attempts"] = job.attempts
    history = job.history
    if len(history) > HISTORY_KEPT or job.attempts > len(history):  # earlier attempts not carried
        history = history[-HISTORY_KEPT:]
        omitted = job.attempts - sum(1 for entry in history if not not_tried(entry))
        if omitted > 0:
            out["results_omitted"] = omitted
    out["results"] = history
    if bounce is not None:
        out["bounce"] = bounce
    return out


def invalid_doc(body: bytes, reason: str, lane: str, now: float, echo: bool = True) -> dict[str, Any]:
    """The result of a message intake refused: what of the producer's fields it could read.
    `echo=False`: the body is not read for fields to echo (refused for its size, unread)."""
    doc: dict[str, Any] = {}
    try:  # read as intake reads it: an integer beyond 64 bits comes back as given, not as a float
        parsed = parse_json(body) if echo else None
    except InvalidMessage:
        parsed = None
    if isinstance(parsed, dict):
        doc = {k: v for k, v in parsed.items() if k not in ("mime", "mime_b64")}
    doc.update(status="invalid", final=True, attempts=0, error=reason,
               results=[{"time": rfc3339(now), "phase": "intake", "code": None, "enhanced": None,
                         "description": reason, "mx": None, "ip": None, "lane": lane}])
    return doc


def dumps(doc: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(doc)
    except orjson.JSONEncodeError:  # a producer's integer beyond 64 bits, which msgspec writes as given
        return msgspec.json.encode(doc)


def carried(job: Job) -> dict:
    """What a republished copy carries beside the producer's body."""
    history = job.history
    if len(history) > HISTORY_KEPT:
        history = history[-HISTORY_KEPT:]
    return {
        H_ID: job.id,
        H_ATTEMPTS: job.attempts,
        H_FIRST: int(job.first_seen * 1000),  # ms: AMQP floats may be 32-bit
        H_RESULTS: orjson.dumps(history).decode(),
    }


def not_tried(entry) -> bool:
    """A history entry that is no attempt (mail expired while held)."""
    return isinstance(entry, dict) and entry.get("phase") == "queue"


def recent_key(job: Job) -> str:
    """What a final outcome is remembered by against a redelivered copy of its message."""
    return f"{job.id}\0{job.recipient.text}\0{len(job.body)}"


def attempt_entry(now: float, phase: str, code: int | None, enhanced: str | None, description: str,
                  mx: str | None, ip: str | None, lane: str) -> dict:
    if len(description) > DESCRIPTION_MAX // 4:  # up to 4 octets a character: shorter ones always fit
        description = cut_text(description, DESCRIPTION_MAX)
    return {"time": rfc3339(now), "phase": phase, "code": code, "enhanced": enhanced,
            "description": description, "mx": mx, "ip": ip, "lane": lane}


def cut_text(text: str, limit: int) -> str:
    """`text` in at most `limit` UTF-8 octets, cut on a character boundary and marked "…"."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return text
    # "ignore" drops the partial character the cut may leave at the end
    return raw[:limit - 3].decode("utf-8", "ignore") + "…"


def said(error: object) -> str:
    """An exception or reason for a log line: bounded, whatever a producer's data put in it."""
    return cut_text(str(error) if isinstance(error, str) else f"{type(error).__name__}: {error}", 300)


def cut_id(message_id: object) -> str:
    text = str(message_id)
    return text if len(text) <= 100 else text[:100] + "…"


def writable(headers: dict) -> dict:
    """An invalid copy's headers without those AMQP cannot carry (a producer's bytes that are
    not UTF-8 come back from the broker as bytes), named in `x-mta-error`."""
    kept: dict = {}
    dropped: list[str] = []
    for name, value in headers.items():
        try:
            header_table({name: value})
        except Unencodable:
            dropped.append(name)
            continue
        kept[name] = value
    if dropped:
        names = ", ".join(name[:40] for name in dropped[:5])
        more = f" and {len(dropped) - 5} more" if len(dropped) > 5 else ""
        kept["x-mta-error"] = f"{headers.get('x-mta-error')}; headers AMQP cannot carry were left out: {names}{more}"
    return kept
