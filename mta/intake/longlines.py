"""Lines over 998 octets made sendable without changing what the message means.

RFC 5322 §2.1.1 and RFC 5321 §4.5.3.1.6 allow 998 octets between line ends; receivers
refuse longer lines ("500 Line too long") or wrap them, which corrupts the content and
breaks a DKIM signature. Theory of operation: `has_long_line` is the hot-path check, a
stride of `bytes.rfind` calls over the LF-only bytes that costs one C call per ~1 KB (no
regular expression: `[^\\n]{999}` retries at every offset and costs 2.8 ms at 100 KB,
this 14 us). Only a message that has such a line goes through `shorten`, which walks its
MIME tree on the bytes and changes only the entities that hold a long line:

- a header line is folded at whitespace (RFC 5322 §2.2.3: unfolding gives back the same
  field); a field with a run of more than 998 octets and no whitespace cannot be folded
  and the message is refused (`Unsendable`, which intake turns into `mta.invalid`):
  re-encoding it as RFC 2047 words would change a structured field's meaning;
- a leaf part in 7bit/8bit/binary (or no encoding) is re-encoded quoted-printable (soft
  line breaks decode to the same octets; line ends stay hard line breaks, so the decoded
  content is exactly what would have been sent); the charset does not matter, as
  quoted-printable works on octets; a top-level entity without `MIME-Version` gets one so
  the new encoding is honoured;
- a base64 part (malformed: base64 lines are at most 76) is rewrapped at 76 characters,
  a quoted-printable one gets soft breaks: both decode to the same octets as before;
- multipart bodies are split at their delimiter lines and each part handled on its own
  (the others stay byte for byte); message/rfc822 and message/global, which must not be
  re-encoded (RFC 2046 §5.2.1), are handled as messages of their own; a long line in a
  preamble or epilogue, which readers ignore, is broken at 998 octets;
- anything else with a long line (an unknown transfer encoding, message/partial, a
  multipart without its boundary) cannot be fixed without guessing: `Unsendable`.

The same walk makes a message 7-bit for a receiver without 8BITMIME (RFC 6152):
`seven_bit` re-encodes each leaf part holding 8-bit octets as quoted-printable; 8-bit
octets in a header field (RFC 6532, which only SMTPUTF8 may carry) or where re-encoding is
not allowed make it `Unsendable`.

Everything here works on LF-only bytes, before dot-stuffing and CRLF (mta.intake.message).
"""

from __future__ import annotations

import binascii
import bisect
import re
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

MAX_LINE = 998  # octets between line ends
# Entities nested deeper are refused: each level costs a pass over what it holds, and no
# mail program writes more than a handful (a forwarded message in an alternative in a mixed).
MAX_DEPTH = 50
# The longest piece one C call (quoted-printable encoding) gets: `shorten` runs in a thread
# for big messages, and the event loop gets the GIL back only between such calls.
QP_PIECE = 256 * 1024
QP_LINE = 76  # RFC 2045 §6.7: encoded lines of quoted-printable and base64
FOLD_LINE = 78  # RFC 5322 §2.1.1: the line length a folded header field aims at


class Unsendable(Exception):
    """A long line that cannot be shortened without changing the message; the text says why."""


def has_long_line(mime: bytes, eol: bytes = b"\n") -> bool:
    """Whether a line of `mime` (its line ends all `eol`: LF here, CRLF for DKIM's signed
    form) is longer than 998 octets.

    Each step jumps to the last line end within the next 998 octets and the line end: one C call per ~1 KB
    (timeit, load 1.0 on 2 cores: 0.2 us at 1 KB, 14 us at 100 KB, 3.3 ms at 20 MB).
    """
    end = len(mime)
    pos = 0
    rfind = mime.rfind
    while end - pos > MAX_LINE:
        lf = rfind(eol, pos, pos + MAX_LINE + len(eol))
        if lf < 0:
            return True
        pos = lf + len(eol)
    return False


def seven_bit(mime: bytes) -> bytes:
    """`mime` (LF-only) with no 8-bit octet and no line over 998 octets, the same meaning;
    or Unsendable."""
    try:
        out = _entity(mime, top=True, default="text/plain", seven=True)
    except Unsendable:
        raise
    except Exception as exc:  # producer's bytes in the email package: a reason, never a stopped consumer
        raise Unsendable(f"8-bit content in a message that could not be parsed: {type(exc).__name__}: {exc}") from exc
    if not out.isascii() or has_long_line(out):  # a safety net: nothing 8-bit goes on the wire
        raise Unsendable("8-bit content that could not be re-encoded (in a preamble, epilogue or malformed part)")
    return out


def _needs_work(data: bytes, seven: bool) -> bool:
    return has_long_line(data) or (seven and not data.isascii())


def _what(seven: bool) -> str:
    return "8-bit content or a long line" if seven else f"a line longer than {MAX_LINE} octets"


def shorten(mime: bytes) -> bytes:
    """`mime` (LF-only) with no line over 998 octets and the same meaning; or Unsendable."""
    try:
        out = _entity(mime, top=True, default="text/plain", depth=0)
    except Unsendable:
        raise
    except Exception as exc:  # producer's bytes in the email package: a reason, never a stopped consumer
        raise Unsendable(f"a line longer than {MAX_LINE} octets in a message that could not be parsed: "
                         f"{type(exc).__name__}: {exc}") from exc
    if has_long_line(out):  # a safety net: nothing long goes on the wire
        raise Unsendable(f"a line longer than {MAX_LINE} octets could not be shortened")
    return out


# ---------------------------------------------------------------- entities

# what the email package takes for a header line (email.feedparser.headerRE)
_HEADER_LINE = re.compile(rb"From |[\041-\071\073-\176]*:|[\t ]")


def _split(entity: bytes) -> tuple[bytes, bytes, bytes]:
    """(header lines with their LFs, separator, body) as a reader would split the entity."""
    pos = 0
    end = len(entity)
    while pos < end:
        lf = entity.find(b"\n", pos)
        stop = end if lf < 0 else lf
        if stop == pos:  # the blank line
            return entity[:pos], b"\n", entity[pos + 1:]
        if not _HEADER_LINE.match(entity, pos, stop):  # a body without a blank line before it
            return entity[:pos], b"", entity[pos:]
        pos = stop + 1
    return entity, b"", b""


def _entity(entity: bytes, top: bool, default: str, depth: int = 0, seven: bool = False) -> bytes:
    """``entity`` with its long lines (``seven``: and its 8-bit octets) re-encoded."""
    if not _needs_work(entity, seven):
        return entity
    if depth > MAX_DEPTH:
        raise Unsendable(f"{_what(seven)} in MIME parts nested more than {MAX_DEPTH} levels deep")
    head, sep, body = _split(entity)
    if seven and not head.isascii():
        raise Unsendable("8-bit octets in a header field (RFC 6532): only SMTPUTF8 can carry them")
    if has_long_line(head):
        head = b"".join(_fold(line) if len(line.rstrip(b"\n")) > MAX_LINE else line
                        for line in head.splitlines(keepends=True))
    if not _needs_work(body, seven):
        return head + sep + body
    fields = BytesHeaderParser(policy=compat32).parsebytes(head + b"\n")
    fields.set_default_type(default)
    cte = str(fields.get("content-transfer-encoding", "")).split("(")[0].strip().lower()
    ctype = fields.get_content_type()
    if cte == "base64":
        return head + sep + _rewrap_base64(body)
    if cte == "quoted-printable":
        return head + sep + _soft_breaks(body)
    if cte not in ("", "7bit", "8bit", "binary"):
        raise Unsendable(f"{_what(seven)} in a part with Content-Transfer-Encoding "
                         f"{cte[:40]!r}, which cannot be re-encoded safely")
    if ctype.startswith("multipart/"):
        return head + sep + _multipart(body, fields, ctype, depth, seven)
    if ctype in ("message/rfc822", "message/global"):
        return head + sep + _entity(body, top=True, default="text/plain", depth=depth + 1, seven=seven)
    if ctype.startswith("message/"):
        raise Unsendable(f"{_what(seven)} in a {ctype!r} part, which must not be re-encoded")
    # the blank line always: an encoded first line could look like a header field where the
    # original did not
    return _quoted_printable(head, fields, top) + b"\n" + _encode_qp(body)


def _quoted_printable(head: bytes, fields: Message, top: bool) -> bytes:
    """The header lines with Content-Transfer-Encoding: quoted-printable instead of what was there."""
    kept, dropping = [], False
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        dropping = line.split(b":", 1)[0].strip().lower() == b"content-transfer-encoding"
        if not dropping:
            kept.append(line)
    if kept and not kept[-1].endswith(b"\n"):
        kept[-1] += b"\n"
    if top and "mime-version" not in fields:
        kept.append(b"MIME-Version: 1.0\n")  # without it a reader need not decode the new encoding
    kept.append(b"Content-Transfer-Encoding: quoted-printable\n")
    return b"".join(kept)


def _encode_qp(body: bytes) -> bytes:
    """Quoted-printable in pieces of at most QP_PIECE octets: cut after a line end the
    encoding is the same; inside a longer line, a soft line break joins the pieces."""
    # istext: line ends stay hard line breaks (decoded as CRLF, as they would have been sent)
    out, pos, end = [], 0, len(body)
    while pos < end:
        cut = min(pos + QP_PIECE, end)
        if cut < end:
            lf = body.rfind(b"\n", pos, cut)
            cut = lf + 1 if lf >= 0 else cut
        piece = binascii.b2a_qp(body[pos:cut], quotetabs=False, istext=True, header=False)
        if cut < end and body[cut - 1] != 10:  # the line goes on in the next piece
            piece = _soft_break(piece)
        out.append(_within_line_limit(piece))
        pos = cut
    return b"".join(out)


def _within_line_limit(encoded: bytes) -> bytes:
    """`encoded` with every line over 76 characters (RFC 2045 §6.7) broken by soft line
    breaks: b2a_qp writes a line's trailing blank as "=20" past the limit when the line was
    already full (up to 78 characters)."""
    lines = encoded.split(b"\n")
    if max(map(len, lines)) <= QP_LINE:
        return encoded
    out = []
    for line in lines:
        while len(line) > QP_LINE:
            cut = QP_LINE - 1
            escape = line.rfind(b"=", cut - 2, cut)  # never between "=" and its two hex digits
            cut = escape if escape >= 0 else cut
            out.append(line[:cut] + b"=")
            line = line[cut:]
        out.append(line)
    return b"\n".join(out)


def _soft_break(encoded: bytes) -> bytes:
    """`encoded` ending inside a line, with a soft line break, its last line kept to 76 with the "="."""
    start = encoded.rfind(b"\n") + 1
    if len(encoded) - start < QP_LINE:
        return encoded + b"=\n"
    # never between "=" and its two hex digits
    cut = next(c for c in range(len(encoded) - 3, start, -1) if b"=" not in encoded[c - 2:c])
    return encoded[:cut] + b"=\n" + encoded[cut:] + b"=\n"


def _rewrap_base64(body: bytes) -> bytes:
    """Base64 decoders skip line ends: the same characters at 76 a line decode to the same octets."""
    flat = body.replace(b"\n", b"")
    lines = [flat[i:i + QP_LINE] for i in range(0, len(flat), QP_LINE)]
    return b"\n".join(lines) + (b"\n" if body.endswith(b"\n") else b"")


def _soft_breaks(body: bytes) -> bytes:
    """Malformed quoted-printable: soft breaks ("=" LF) split its long lines, never inside an =XX."""
    out = []
    for line in body.split(b"\n"):
        while len(line) > MAX_LINE:
            # no "=" among the last two octets of a piece: no =XX is split, malformed or not
            cut = next((c for c in range(QP_LINE - 1, 2, -1) if b"=" not in line[c - 2:c]), QP_LINE - 1)
            out.append(line[:cut] + b"=")
            line = line[cut:]
        out.append(line)
    return b"\n".join(out)


# ---------------------------------------------------------------- multipart


def _multipart(body: bytes, fields: Message, ctype: str, depth: int, seven: bool = False) -> bytes:
    boundary = fields.get_boundary()
    if not boundary:
        raise Unsendable(f"{_what(seven)} in a {ctype!r} without a boundary")
    marker = b"--" + boundary.encode("utf-8", "surrogateescape")
    delimiter = re.compile(rb"^" + re.escape(marker) + rb"(--)?[ \t]*$", re.M)
    child = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
    out, pos, parts = [], 0, 0
    for start_at, end_at, closing in _delimiters(body, marker):
        # the LF before a delimiter line belongs to the delimiter (RFC 2046 §5.1.1)
        start = max(start_at - 1, pos) if start_at > 0 else 0
        segment = body[pos:start]
        out.append(_entity(segment, top=False, default=child, depth=depth + 1, seven=seven) if parts
                   else _preamble(segment, delimiter))
        parts += 1
        pos = end_at + 1 if body[end_at:end_at + 1] == b"\n" else end_at
        out.append(body[start:pos])
        if closing:  # the close delimiter: the rest is the epilogue
            out.append(_preamble(body[pos:], delimiter))
            return b"".join(out)
    if not parts:
        raise Unsendable(f"{_what(seven)} in a {ctype!r} whose boundary never occurs")
    # unterminated: the last part runs to the end
    out.append(_entity(body[pos:], top=False, default=child, depth=depth + 1, seven=seven))
    return b"".join(out)


_DELIMITER_END = re.compile(rb"(--)?[ \t]*(?=\n|\Z)")


def _delimiters(body: bytes, marker: bytes):
    """(start, end, closing) of each delimiter line, as `^--boundary(--)?[ \\t]*$` in
    multi-line mode finds them, but by `bytes.find`: a regular expression scans a 20 MB
    part in one C call that keeps the GIL (100 ms), `find` in a few milliseconds."""
    pos = 0
    while True:
        at = body.find(marker, pos)
        if at < 0:
            return
        if at == 0 or body[at - 1] == 10:
            end = _DELIMITER_END.match(body, at + len(marker))
            if end is not None:
                yield at, end.end(), end.group(1) is not None
                pos = end.end()
                continue
        pos = at + 1


def _preamble(text: bytes, delimiter: re.Pattern) -> bytes:
    """Preamble and epilogue are for readers without MIME; breaking their lines changes nothing."""
    if not has_long_line(text):
        return text
    lines = []
    for line in text.split(b"\n"):
        lines.extend(line[i:i + MAX_LINE] for i in range(0, max(len(line), 1), MAX_LINE))
    out = b"\n".join(lines)
    if len(delimiter.findall(out)) != len(delimiter.findall(text)):
        raise Unsendable(f"a line longer than {MAX_LINE} octets in a preamble or epilogue that hides a boundary")
    return out


# ---------------------------------------------------------------- header fields

_FOLD_POINT = re.compile(rb"(?<=[^ \t])[ \t]+(?=[^ \t\n])")


def _fold(line: bytes) -> bytes:
    """One physical header line over 998 octets folded at whitespace, each piece aiming at 78."""
    eol = b"\n" if line.endswith(b"\n") else b""
    text = line[:len(line) - len(eol)]
    points = [m.start() for m in _FOLD_POINT.finditer(text)]
    pieces, start = [], 0
    while len(text) - start > FOLD_LINE:
        low = bisect.bisect_right(points, start)
        at = bisect.bisect_right(points, start + FOLD_LINE) - 1
        if at < low:
            at = bisect.bisect_right(points, start + MAX_LINE) - 1
        if at < low:
            if len(text) - start <= MAX_LINE:
                break
            name = text.split(b":", 1)[0][:40].decode("ascii", "replace")
            raise Unsendable(f"header field {name!r} has more than {MAX_LINE} octets without whitespace to fold "
                             f"at (RFC 5322 §2.2.3)")
        pieces.append(text[start:points[at]])
        start = points[at]
    pieces.append(text[start:])
    return b"\n".join(pieces) + eol
