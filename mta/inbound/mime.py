"""Reading a report as MIME, with bounded work whatever arrives.

The standard library's `email` parser, with `policy.compat32`: it keeps header values as
the strings that arrived and decodes nothing until asked, where `policy.default` parses
every structured header it is asked for through its header registry, which is slower and
has raised on malformed input (bad address lists, broken encoded words) in past Python
releases. We decode the few headers we read ourselves (`header`), never raising.

Bounds: at most `MAX_INPUT` octets are parsed (a report's own parts come first; what
follows is the returned copy of the original, of which only the headers matter), and
the input is cut before its `MAX_MULTIPARTS`-th multipart, since the parser recurses once
per nesting level and slows down with each, and before its `MAX_DASH_LINES`-th line that
may be a boundary (800,000 empty parts took the parser 8 s; a report has a handful).
Text is read up to `MAX_SCAN` octets a part, a header value (and its parameters) up to
`MAX_HEADER` characters.
"""

from __future__ import annotations

import email
import email.policy
import re
from email.header import decode_header
from email.message import Message
from email.parser import HeaderParser

MAX_INPUT = 4 * 1024 * 1024
MAX_MULTIPARTS = 64
MAX_SCAN = 256 * 1024
MAX_PARTS = 200  # parts looked at in one walk
MAX_DASH_LINES = 2000  # lines starting "--" parsed: every part costs the parser, walked or not
# Characters of a header value read: room for 100 failed recipients' addresses; the
# standard library decodes encoded words in quadratic time (2.8 MB of them: minutes).
MAX_HEADER = 32 * 1024

_MULTIPART = re.compile(rb"multipart/", re.IGNORECASE)
_DASHES = re.compile(rb"^--", re.MULTILINE)  # where a boundary line may be
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")


class _Message(Message):
    """compat32's Message, reading the parameters of a header (a charset, a boundary) from
    its first `MAX_HEADER` characters: the standard library splits them in quadratic time."""

    def _get_params_preserve(self, failobj, header):
        value = self.get(header)
        if value is None or len(text := str(value)) <= MAX_HEADER:
            return super()._get_params_preserve(failobj, header)
        cut = Message(policy=email.policy.compat32)
        cut[header] = text[:MAX_HEADER]
        return cut._get_params_preserve(failobj, header)


def load(data: bytes) -> Message:
    data = data[:MAX_INPUT]
    for pattern, most in ((_MULTIPART, MAX_MULTIPARTS), (_DASHES, MAX_DASH_LINES)):
        for count, match in enumerate(pattern.finditer(data), start=1):
            if count >= most:
                data = data[:match.start()]
                break
    return email.message_from_bytes(data, _class=_Message, policy=email.policy.compat32)


def _clean(text: str) -> str:
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return " ".join(text.split())


def header(msg: Message, name: str) -> str:
    """The unfolded, decoded value of `name` ("" when absent or unreadable), from its first
    `MAX_HEADER` characters."""
    try:
        value = msg.get(name)
        if value is None:
            return ""
        text = str(value)[:MAX_HEADER]
        if not _ENCODED_WORD.search(text):
            return _clean(text)
        pieces = []
        for chunk, charset in decode_header(text):
            if isinstance(chunk, bytes):
                chunk = _decode(chunk, charset)
            pieces.append(chunk)
        return _clean("".join(pieces))
    except Exception:  # a header we cannot read says nothing
        return ""


def _decode(octets: bytes, charset: str | None) -> str:
    try:
        return octets.decode(charset or "utf-8", "replace")
    except (LookupError, TypeError, ValueError):  # an unknown or nonsensical charset name
        return octets.decode("utf-8", "replace")


def payload(part: Message) -> list[Message] | str | None:
    """A part's payload as parsed (its subparts, or its text undecoded); None when even
    that fails (8-bit text under a charset name Python refuses)."""
    try:
        return part.get_payload()
    except Exception:
        return None


def walk(msg: Message):
    """The parts of `msg`, depth first, descending into multiparts only: a returned
    message (message/rfc822) is a leaf, so a bounce that returns a bounce is read once."""
    stack, seen = [msg], 0
    while stack and seen < MAX_PARTS:
        part = stack.pop()
        seen += 1
        yield part
        parts = payload(part)
        if part.get_content_maintype() == "multipart" and isinstance(parts, list):
            stack.extend(reversed([p for p in parts if isinstance(p, Message)]))


def text(part: Message) -> str:
    """A leaf part's decoded text, at most `MAX_SCAN` octets of it."""
    try:
        octets = part.get_payload(decode=True)
    except Exception:
        return ""
    if not isinstance(octets, bytes):
        return ""
    charset = None
    try:
        charset = part.get_content_charset()
    except Exception:
        pass
    return _decode(octets[:MAX_SCAN], charset)


def field_blocks(part: Message) -> list[dict[str, str]]:
    """The blocks of `Name: value` fields of a message/delivery-status or
    message/feedback-report part (lower-cased names, first value of each)."""
    blocks = payload(part)
    if isinstance(blocks, list):
        return [_fields(block) for block in blocks if isinstance(block, Message)]
    return [_fields(HeaderParser(policy=email.policy.compat32).parsestr(b.strip() + "\n"))
            for b in re.split(r"\r?\n[ \t]*\r?\n", text(part)) if b.strip()]


def _fields(block: Message) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name in block.keys():
        fields.setdefault(name.lower(), header(block, name))
    return fields


def headers_of(part: Message) -> Message | None:
    """The headers of a returned original: a message/rfc822 part's message, or a
    text/rfc822-headers part's text parsed as headers."""
    copy = payload(part)
    if isinstance(copy, list):
        return copy[0] if copy and isinstance(copy[0], Message) else None
    return parse_headers(text(part))


def parse_headers(source: str) -> Message | None:
    source = source.lstrip("\r\n")[:MAX_SCAN]
    if not source:
        return None
    return HeaderParser(policy=email.policy.compat32).parsestr(source)
