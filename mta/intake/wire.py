"""The producer's MIME as it goes on the wire: CRLF line ends only, leading dots doubled,
ending in CRLF (the DATA payload without the final dot).

Theory of operation. At 100 KB the work is in the passes over every byte, and in CPython a
pass looks for one byte (`memchr`: `in`, `find`, a one-byte `replace`) ten to twenty
times faster than it looks for two (`b"\\r\\n"`, `b"\\n."`: a loop that checks every
third byte, about 100 us at 100 KB). So the common inputs take one-byte passes only:

- LF-only (no CR anywhere, one `memchr`): the LF form as it is;
- CRLF only (the form a producer that writes SMTP's own line ends sends): all CRs
  deleted, then put back before each LF; if that gives the input again, every CR was in a
  CRLF and every LF after a CR, and the input is its own wire form (not copied again when
  no dot needs doubling); else the bare CRs and LFs take the general two-byte path;
- a line that starts with a dot after the first: found by jumping from dot to dot
  (`find`), which at most `DOT_PROBES` times looks at the octet before one; past that
  (text full of dots) the regular expression finds it, as before.

The result is the same octets as the plain definition (tests/mta/test_wire.py compares
the two on random and adversarial inputs), so signing and sending see what they saw.
"""

from __future__ import annotations

import re

from mta.intake.address import InvalidMessage
from mta.intake.longlines import Unsendable, has_long_line, shorten

DOT_PROBES = 16  # dots looked at one by one before the regular expression takes over
_LINE_DOT = re.compile(rb"\n\.")


def canonical_data(mime: bytes) -> bytes:
    """CRLF line ends only, leading dots doubled, ending in CRLF: the DATA payload without the final dot.

    Bare CR and bare LF both become CRLF, so what is signed is what arrives (a receiver
    that normalises differently cannot break a signature or be smuggled a second message).
    A line over 998 octets is shortened without changing the content (`mta.intake.longlines`:
    quoted-printable, folding); InvalidMessage if that cannot be done safely.
    """
    wire = None  # the input itself, when it is already CRLF-only
    if b"\r" in mime:
        mime, wire = lf_form(mime)
    if has_long_line(mime):  # 0.2 us at 1 KB, 14 us at 100 KB when there is none
        try:
            mime = shorten(mime)
        except Unsendable as exc:
            raise InvalidMessage(str(exc)) from None
        wire = None
    # Dot-stuffing while the line ends are still single LFs: `replace` doubles them in one
    # pass (a regular expression substitution over 20 MB would hold the GIL for tens of ms).
    if line_dot(mime):
        mime = mime.replace(b"\n.", b"\n..")
        wire = None
    if mime.startswith(b"."):
        mime = b"." + mime
        wire = None
    data = mime.replace(b"\n", b"\r\n") if wire is None else wire
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def lf_form(mime: bytes) -> tuple[bytes, bytes | None]:
    """`mime` (which has a CR) with LF line ends only, and `mime` again if it was CRLF-only
    (else None): each CRLF, bare CR and bare LF is one LF."""
    lf = mime.replace(b"\r", b"")
    if lf.replace(b"\n", b"\r\n") == mime:
        return lf, mime
    return mime.replace(b"\r\n", b"\n").replace(b"\r", b"\n"), None


def line_dot(mime: bytes) -> bool:
    """Whether a line after the first of the LF-only `mime` starts with a dot (b"\\n." in
    it), looking at the dots one by one while they are few."""
    find = mime.find
    at = find(b".", 1)
    for _ in range(DOT_PROBES):
        if at < 0:
            return False
        if mime[at - 1] == 10:  # LF
            return True
        at = find(b".", at + 1)
    return at >= 0 and _LINE_DOT.search(mime, at - 1) is not None
