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
from email.utils import format_datetime
from datetime import datetime, timezone

import orjson

from mta.broker.publish import Publish


def submission_id(source: str, mail_from: str, recipients: list[str], content: bytes) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in (source, mail_from, *recipients):
        h.update(part.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    h.update(content)
    return h.hexdigest()


def received(helo: str, client: str, hostname: str, protocol: str, sid: str, source: str,
             recipients: list[str], now: float) -> bytes:
    """Our trace header (RFC 5321 §4.4), folded; `for` only when there is one recipient."""
    when = format_datetime(datetime.fromtimestamp(now, timezone.utc))
    helo = "".join(ch for ch in helo if ch.isprintable() and ch not in "()")[:255] or "unknown"
    text = f"Received: from {helo} ([{client}])\r\n\tby {hostname} with {protocol} id {sid}\r\n\t(source {source})"
    if len(recipients) == 1:
        text += f"\r\n\tfor <{recipients[0]}>"
    return f"{text}; {when}\r\n".encode("utf-8", "surrogateescape")


def publishes(sid: str, source, mail_from: str, recipients: list[str], content: bytes,
              trace: bytes, indexes: list[int]) -> list[Publish]:
    """The JSON message of each recipient in `indexes`, for the source's lane."""
    mime = trace + content
    try:
        field = {"mime": mime.decode("utf-8")}  # byte for byte: the engine encodes it back the same
    except UnicodeDecodeError:
        field = {"mime_b64": base64.b64encode(mime).decode("ascii")}
    tags = list(source.tags)
    out = []
    for i in indexes:
        doc = {"recipient": recipients[i], "envelope": mail_from, **field, "id": sid, "source": source.name}
        if tags:
            doc["tags"] = tags
        out.append(Publish("mta", source.lane, orjson.dumps(doc)))
    return out
