"""Intake: turn a consumed AMQP body into a validated `Job`, or say exactly why not.

Everything that could put a command on the wire is checked here, before any network I/O:
the addresses (`mta.intake.address`: RFC 5321 syntax and lengths, no CR/LF/NUL, no
whitespace or brackets), the choice of `mime` xor `mime_b64`, and the per-message
overrides. The MIME is converted to canonical SMTP form once (CRLF line ends,
dot-stuffed: `mta.intake.wire`), so signing and sending both see the bytes that go out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from typing import Any

import msgspec
import orjson

from mta.intake.address import Address, InvalidMessage, parse_address
from mta.intake.wire import canonical_data
from mta.broker.topology import delay_queue
from shaper.retry import MAX_MESSAGE_SECONDS

# Our own headers on copies the MTA republishes (retries, held mail). The body stays the
# producer's bytes; what the MTA learned travels beside it.
H_ID = "x-mta-id"
H_ATTEMPTS = "x-mta-attempts"
H_FIRST = "x-mta-first"  # first acceptance, epoch milliseconds
H_RESULTS = "x-mta-results"

# The longest id accepted: a retry copy carries it in its `x-mta-id` header, and the whole
# content header must fit one broker frame (131,072 octets by default) beside the history;
# ids are message references, not payloads. 1,000 characters also keep log lines readable.
MAX_ID = 1000
_ID_BEYOND, _ID_LOWEST = 10 ** MAX_ID, -10 ** (MAX_ID - 1)  # integer ids strictly between: at most MAX_ID characters
# Attempts a carried count may say: far beyond any retry schedule within the longest max_age
# (one attempt a second for the whole of it), far below what an AMQP integer or a result can carry.
MAX_CARRIED_ATTEMPTS = 1_000_000


class BodyTooLarge(InvalidMessage):
    """Refused before it was read: nothing of it (not even its id) can be echoed."""


class Job:
    """One message between consume and settle. Mutable: an attempt adds to it."""

    __slots__ = (
        "delivery", "lane", "body", "doc", "id", "recipient", "sender", "data", "eight_bit",
        "attempts", "first_seen", "history", "retries", "max_age", "max_attempts", "tags",
        "destination", "size", "mail_from",
    )

    def __init__(self) -> None:
        self.destination = None
        self.mail_from: str | None = None  # the envelope sender on the wire, when not `sender` (VERP)

    @property
    def domain(self) -> str:
        return self.recipient.ascii_domain

    def wire_sender(self) -> tuple[str, bool]:
        """MAIL FROM's address and whether it needs SMTPUTF8: ours under VERP (the producer's
        is then not on the wire), else the producer's."""
        if self.mail_from:
            return self.mail_from, not self.mail_from.isascii()
        return (self.sender.text, self.sender.utf8) if self.sender else ("", False)


def decode(body: bytes, headers: dict[str, Any], lane: str, now: float, message_id: str | None = None,
           max_size: int | None = None) -> Job:
    """Validate one consumed body; raises InvalidMessage with the reason.

    `message_id` is the AMQP property, the id of a message without one of its own;
    `max_size` the largest MIME accepted: a larger one is measured, not converted (the
    caller refuses it by `job.size`), so its repair never runs.
    """
    if max_size is not None and len(body) > max_body(max_size):
        raise BodyTooLarge(f"body of {len(body)} octets is larger than any message of at most "
                           f"{max_size} octets (max_message_size) can be written in JSON")
    doc = parse_json(body)
    if not isinstance(doc, dict):
        raise InvalidMessage(f"body must be a JSON object, got {type(doc).__name__}")
    for required in ("recipient", "envelope"):
        if required not in doc:
            raise InvalidMessage(f"missing required field {required!r}")
    job = Job()
    job.recipient = parse_address(doc["recipient"], "recipient")
    envelope = doc["envelope"]
    job.sender = None if envelope == "" else _sender(envelope)
    raw = _mime(doc, max_size)
    if raw is None:  # over max_size: only its size is needed
        job.data, job.size, job.eight_bit = b"", _b64_size(doc["mime_b64"]), False
    else:
        if not raw or raw.isspace():  # (strip() would copy the whole message)
            raise InvalidMessage("the message is empty")
        job.size = len(raw)
        if max_size is not None and job.size > max_size:
            job.data, job.eight_bit = b"", False
        else:
            job.data = canonical_data(raw)
            job.eight_bit = not job.data.isascii()  # what is sent: a re-encoded long-line message may be 7-bit
    job.id = _message_id(doc, headers, message_id, body)
    if _OPTIONAL.isdisjoint(doc):  # the common message sets none of them: their defaults, unchecked
        job.tags, job.retries, job.max_age, job.max_attempts = (), None, None, 0
    else:
        job.tags = _tags(doc)
        job.retries = _retries(doc)
        job.max_age = _positive_number(doc, "maxdelivertime")
        job.max_attempts = _max_attempts(doc)
        _check_dkim(doc)
    job.doc = doc
    job.body = body
    job.lane = lane
    job.attempts, job.first_seen, job.history = 0, now, []
    if headers and "x-death" in headers and _from_delay_queue(headers, lane):
        _restore(job, headers, now)
    return job


_OPTIONAL = frozenset({"tags", "retries", "maxdelivertime", "maxattempts", "dkim"})  # fields decode checks when set

# JSON integers beyond 64 bits stay integers (orjson would make them floats, and a float
# cannot give back 123456789012345678901 in the results); the same speed at 1 KB.
_DECODER = msgspec.json.Decoder()


def parse_json(body: bytes) -> Any:
    """The body as intake reads it (settle echoes an invalid one's fields the same way)."""
    try:
        return _DECODER.decode(body)
    except msgspec.DecodeError:
        pass
    try:  # what msgspec refuses and orjson takes (a lone surrogate escape) gets its precise reason below
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessage(f"body is not valid JSON: {exc}") from None


def _mime(doc: dict, max_size: int | None) -> bytes | None:
    """The producer's message as octets; None if `mime_b64` says it is over `max_size` (not decoded)."""
    has_mime, has_b64 = "mime" in doc, "mime_b64" in doc
    if has_mime == has_b64:
        raise InvalidMessage("exactly one of 'mime' and 'mime_b64' is required")
    if has_mime:
        if not isinstance(doc["mime"], str):
            raise InvalidMessage("mime: expected a string")
        try:
            return doc["mime"].encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidMessage("mime: not valid Unicode (lone surrogate)") from None
    text = doc["mime_b64"]
    if not isinstance(text, str):
        raise InvalidMessage("mime_b64: expected a base64 string")
    if max_size is not None and _b64_size(text) > max_size:
        return None
    try:
        return _b64decode(text)
    except (binascii.Error, ValueError) as exc:
        raise InvalidMessage(f"mime_b64: not valid base64: {exc}") from None


B64_PIECE = 1 << 20  # characters decoded per C call (a multiple of 4): see `_b64decode`


def _b64decode(text: str) -> bytes:
    """base64 in pieces: a big message is decoded in a thread, and one call over 27 MB would
    keep the GIL from the event loop for 60 ms."""
    if len(text) <= B64_PIECE:
        return base64.b64decode(text, validate=True)
    pieces = []
    for start in range(0, len(text), B64_PIECE):
        piece = text[start:start + B64_PIECE]
        if start + B64_PIECE < len(text) and piece.endswith("="):
            raise binascii.Error("padding before the end of the data")
        pieces.append(base64.b64decode(piece, validate=True))
    return b"".join(pieces)


def _b64_size(text: str) -> int:
    """Octets that `text` decodes to (validate=True allows no line breaks: 3 per 4 characters, less padding)."""
    return len(text) // 4 * 3 - text.endswith("=") - text.endswith("==")


# The longest body a MIME of `max_size` octets can arrive in: JSON escapes a control
# character in six octets (\u0001), and base64 needs 4 for 3; the other fields (addresses,
# id, tags, the producer's own) get 64 KiB beside it. A longer body is refused unread.
JSON_ESCAPE = 6
OTHER_FIELDS = 64 * 1024


def max_body(max_size: int) -> int:
    return JSON_ESCAPE * max_size + OTHER_FIELDS


_SENDERS: dict[str, Address] = {}  # bulk mail comes from few envelope senders: parse each once


def _sender(envelope: Any) -> Address:
    if isinstance(envelope, str):
        known = _SENDERS.get(envelope)
        if known is not None:
            return known
    address = parse_address(envelope, "envelope")
    if len(_SENDERS) >= 10_000:
        _SENDERS.clear()
    _SENDERS[envelope] = address
    return address


def _header_int(headers: dict[str, Any], name: str) -> int:
    """One of our own headers; a copy that carries it wrongly gets a reason, not a crash."""
    try:
        return int(headers.get(name, 0) or 0)
    except (TypeError, ValueError, OverflowError):
        raise InvalidMessage(f"header {name}: expected a whole number") from None


def _from_delay_queue(headers: dict[str, Any], lane: str) -> bool:
    """Whether this delivery is a copy our own delay queue gave back (a retry or held copy).

    Our delay queues dead-letter by TTL into the lane, and the broker then puts the death
    first in `x-death`: reason `expired`, queue `mta.wait.<lane>.<delay>` (or the earlier
    naming `mta.delay.<lane>.<N>s`, whose queues drain after an upgrade). A producer's publish
    has no such entry unless the producer wrote one: the check keeps a producer's stray or
    copied `x-mta-*` headers from counting, not one set on deceiving it (RabbitMQ takes
    `x-death` from publishers as they give it).
    """
    deaths = headers["x-death"]
    if not isinstance(deaths, list) or not deaths or not isinstance(deaths[0], dict):
        return False
    latest = deaths[0]
    reason, queue = _text(latest.get("reason")), _text(latest.get("queue"))
    return reason == "expired" and queue.startswith(_DELAY_PREFIX.get(lane) or _delay_prefixes(lane))


def _delay_prefixes(lane: str) -> tuple[str, str]:
    prefixes = _DELAY_PREFIX[lane] = (delay_queue(lane, 1).rpartition(".")[0] + ".", f"mta.delay.{lane}.")
    return prefixes


_DELAY_PREFIX: dict[str, tuple[str, str]] = {}


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def _restore(job: Job, headers: dict[str, Any], now: float) -> None:
    """What a retry or held copy carries: attempts so far, first acceptance, attempt history."""
    attempts = _header_int(headers, H_ATTEMPTS)
    if attempts > MAX_CARRIED_ATTEMPTS:
        raise InvalidMessage(f"header {H_ATTEMPTS}: more than {MAX_CARRIED_ATTEMPTS} attempts")
    job.attempts = max(0, attempts)
    first = _header_int(headers, H_FIRST)
    # Compared as integers: a forged 400-digit value is no float. One that is no time of
    # this message (zero, negative, later than now) counts for nothing: it must neither
    # outlive max_age nor expire the mail at once.
    if 0 < first <= now * 1000:
        job.first_seen = first / 1000
    previous = headers.get(H_RESULTS)
    try:
        job.history = orjson.loads(previous) if previous else []
    except (TypeError, ValueError):
        raise InvalidMessage(f"header {H_RESULTS}: not a JSON list") from None
    if not isinstance(job.history, list):
        raise InvalidMessage(f"header {H_RESULTS}: not a JSON list")


def _message_id(doc: dict, headers: dict[str, Any], message_id: str | None, body: bytes) -> str:
    """The producer's `id`; else the one a retry copy carries; else one derived from the
    AMQP message (its message-id property, or a name-based UUID of the body), so that a
    redelivered copy gets the same id and is recognised."""
    given = doc.get("id")
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, (str, int)) or given == "":
            raise InvalidMessage("id: expected a non-empty string or number")
        if isinstance(given, int) and not _ID_LOWEST < given < _ID_BEYOND:  # (str() of a huge one may raise)
            raise InvalidMessage(f"id: longer than {MAX_ID} characters")
        return _bounded_id(str(given), "id")
    carried = headers.get(H_ID) if headers else None
    if isinstance(carried, bytes):
        carried = carried.decode("ascii", "replace")
    if carried:
        return _bounded_id(str(carried), f"header {H_ID}")
    if message_id:
        return message_id
    return body_id(body)


def _bounded_id(text: str, where: str) -> str:
    if len(text) > MAX_ID:
        raise InvalidMessage(f"{where}: longer than {MAX_ID} characters ({len(text)})")
    return text


def body_id(body: bytes) -> str:
    """A name-based UUID of the body (RFC 4122 §4.3, version 5: SHA-1 in our own namespace)."""
    digest = hashlib.sha1(_BODY_IDS)
    digest.update(body)  # (hashlib lets go of the GIL for a large body)
    octets = bytearray(digest.digest()[:16])
    octets[6] = (octets[6] & 0x0F) | 0x50  # version 5 (uuid.UUID would do the same at twice the cost)
    octets[8] = (octets[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = octets.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


_BODY_IDS = uuid.UUID("0f3b2a56-8f6e-4c55-9d1e-6a0b7c2f41d3").bytes  # namespace of ids derived from bodies


def _tags(doc: dict) -> tuple[str, ...]:
    tags = doc.get("tags", ())
    if not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) for t in tags):
        raise InvalidMessage("tags: expected a list of strings")
    return tuple(tags)


def _retries(doc: dict) -> tuple[float, ...] | None:
    retries = doc.get("retries")
    if retries is None:
        return None
    if not isinstance(retries, list) or not retries or not all(
        not isinstance(r, bool) and isinstance(r, (int, float)) and 0 < r <= MAX_MESSAGE_SECONDS for r in retries
    ):
        raise InvalidMessage("retries: expected a non-empty list of positive numbers of seconds, "
                             f"at most {MAX_MESSAGE_SECONDS:g}")
    return tuple(float(r) for r in retries)


def _positive_number(doc: dict, field: str) -> float | None:
    value = doc.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_MESSAGE_SECONDS:
        raise InvalidMessage(f"{field}: expected a positive number of seconds, at most {MAX_MESSAGE_SECONDS:g}")
    return float(value)


def _max_attempts(doc: dict) -> int:
    max_attempts = doc.get("maxattempts", 0)
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 0:
        raise InvalidMessage("maxattempts: expected a whole number >= 0")
    return max_attempts


def _check_dkim(doc: dict) -> None:
    """`dkim` is read when the message is signed; a malformed one is refused here, at intake."""
    dkim = doc.get("dkim")
    if dkim is not None and dkim is not False and not (isinstance(dkim, dict) and isinstance(dkim.get("domain"), str) and isinstance(dkim.get("selector"), str)):
        raise InvalidMessage("dkim: expected false or {domain, selector}")
