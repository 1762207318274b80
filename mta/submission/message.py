"""A submission becomes what producers publish (SPEC §1): one JSON message per recipient,
with `source` and the source's `tags`, and `mime` the received octets behind our
`Received:` header.

Its id is derived from the submission itself (source, envelope, recipients, content), not
drawn at random: a client that got no answer, or a 451, sends the same message again, and
the listener recognises it (mta.submission.record) instead of publishing it twice.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache
from email.utils import format_datetime
from datetime import datetime, timezone

import orjson

from mta.broker.publish import Publish


def submission_id(source: str, mail_from: str, recipients: list[str], content: bytes) -> str:
    """Every part length-prefixed: no two different submissions hash the same input."""
    h = hashlib.blake2b(digest_size=16)
    h.update(len(recipients).to_bytes(4, "big"))
    for part in (source.encode(), mail_from.encode("utf-8", "surrogateescape"),
                 *(r.encode("utf-8", "surrogateescape") for r in recipients), content):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def next_id(sid: str, n: int) -> str:
    """The id of the n-th time (n >= 2) the same submission was accepted: an application
    may send the same message again on purpose, and each one is a message of its own."""
    return hashlib.blake2b(f"{sid}#{n}".encode(), digest_size=16).hexdigest()


def received(helo: str, client: str, hostname: str, protocol: str, sid: str, source: str,
             recipients: list[str], now: float) -> bytes:
    """Our trace header (RFC 5321 §4.4), folded; `for` only when there is one recipient."""
    when = _date(int(now))
    text = f"Received: from {_printable(helo)} ([{client}])\r\n\tby {hostname} with {protocol} id {sid}\r\n\t(source {source})"
    if len(recipients) == 1:
        text += f"\r\n\tfor <{recipients[0]}>"
    return f"{text}; {when}\r\n".encode("utf-8", "surrogateescape")


@lru_cache(maxsize=1024)
def _printable(helo: str) -> str:
    """The client's EHLO name as the header can carry it; a client says the same one for
    every message of its connection."""
    return "".join(ch for ch in helo if ch.isprintable() and ch not in "()")[:255] or "unknown"


@lru_cache(maxsize=4)
def _date(second: int) -> str:
    """RFC 5322's date of a second: many messages a second share it, and the standard
    library's formatting was a fiftieth of a listener's CPU."""
    return format_datetime(datetime.fromtimestamp(second, timezone.utc))


def publishes(sid: str, source, mail_from: str, recipients: list[str], content: bytes,
              trace: bytes, indexes: list[int]) -> list[Publish]:
    """The JSON message of each recipient in `indexes`, for the source's lane. The message
    is encoded once; each document is that piece with the recipient's fields around it."""
    mime = trace + content
    try:
        field = b'"mime":' + orjson.dumps(mime.decode("utf-8"))  # byte for byte: decoded back the same
    except UnicodeDecodeError:
        field = b'"mime_b64":' + orjson.dumps(base64.b64encode(mime).decode("ascii"))
    tail = b',"id":' + orjson.dumps(sid) + b',"source":' + orjson.dumps(source.name)
    if source.tags:
        tail += b',"tags":' + orjson.dumps(list(source.tags))
    envelope = b',"envelope":' + orjson.dumps(mail_from) + b","
    return [Publish("mta", source.lane, b'{"recipient":' + orjson.dumps(recipients[i]) + envelope + field + tail + b"}")
            for i in indexes]
