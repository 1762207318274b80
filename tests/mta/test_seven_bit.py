"""`mta.intake.longlines.seven_bit`: a message made 7-bit for a receiver without 8BITMIME (RFC 6152)
reads the same; what cannot be re-encoded is refused with a reason, never sent 8-bit.
`mta.smtp.session.downgrade` applies it to a message as sent (CRLF, dot-stuffed)."""

from __future__ import annotations

import email
import email.policy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta.intake.longlines import Unsendable, has_long_line, seven_bit
from mta.intake.message import canonical_data
from mta.smtp.client import Reply
from mta.smtp.session import downgrade


def leaves(mime: bytes) -> list[bytes]:
    message = email.message_from_bytes(mime, policy=email.policy.compat32)
    return [part.get_payload(decode=True) for part in message.walk() if not part.is_multipart()]


_line = st.one_of(
    st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")),
    st.tuples(st.sampled_from([b"\xc3\xa9", b".", b"=", b" ", b"ab"]), st.integers(1, 700)).map(lambda t: t[0] * t[1]),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_line, min_size=1, max_size=6), st.lists(_line, min_size=1, max_size=3))
def test_any_8bit_body_reads_the_same_7bit(first: list[bytes], second: list[bytes]) -> None:
    one, two = b"\n".join(first) + b"\n", b"\n".join(second) + b"\n"
    mime = (b"From: <a@s.test>\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"==b\"\n\n"
            b"--==b\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n" + one
            + b"--==b\nContent-Type: application/octet-stream\n\n" + two + b"--==b--\n")
    out = seven_bit(mime)
    assert out.isascii() and not has_long_line(out)
    assert leaves(out) == leaves(mime)


def test_7bit_parts_stay_byte_for_byte() -> None:
    mime = (b"From: <a@s.test>\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\nascii only\n"
            b"--b\nContent-Transfer-Encoding: base64\n\naGVsbG8=\n--b\n\n\xe9t\xe9\n--b--\n")
    out = seven_bit(mime)
    assert out.startswith(mime[:mime.index(b"--b\n\n\xe9")])
    assert out.isascii()


@pytest.mark.parametrize("mime, reason", [
    (b"Subject: \xc3\xa9t\xc3\xa9\n\nbody\n", "header field"),
    (b"Content-Transfer-Encoding: x-uuencode\n\n\xe9\n", "x-uuencode"),
    (b"Content-Type: message/partial; id=x\n\n\xe9\n", "message/partial"),
    (b"Content-Type: multipart/mixed; boundary=b\n\n\xe9 preamble\n--b\n\nx\n--b--\n", "re-encoded"),
    (b"Content-Type: message/rfc822\n\nSubject: \xe9\n\nx\n", "header field"),
])
def test_what_cannot_be_re_encoded_is_refused_with_a_reason(mime: bytes, reason: str) -> None:
    with pytest.raises(Unsendable, match=reason):
        seven_bit(mime)


def test_downgrade_undoes_and_redoes_the_dot_stuffing() -> None:
    out = downgrade(canonical_data(b"From: <a@s.test>\n\n.lead\n..two\n\xc3\xa9\n"))
    assert isinstance(out, bytes) and out.isascii()
    assert b"\r\n..lead\r\n...two\r\n" in out  # each leading dot doubled once, as before
    unstuffed = out.replace(b"\r\n.", b"\r\n")
    assert leaves(unstuffed) == [b".lead\r\n..two\r\n\xc3\xa9\r\n"]


def test_downgrade_refusals() -> None:
    assert downgrade(canonical_data(b"Subject: \xc3\xa9\n\nx\n")).enhanced == "5.6.9"
    signed = downgrade(canonical_data(b"dkim-signature: v=1; d=s.test\nFrom: <a@s.test>\n\n\xc3\xa9\n"))
    assert (signed.code, signed.enhanced) == (451, "4.6.3")
    assert downgrade(canonical_data(b"Content-Transfer-Encoding: x-foo\n\n\xe9\n")).enhanced == "5.6.3"
