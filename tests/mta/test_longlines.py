"""Lines over 998 octets (fault suite scenario 7): intake re-encodes or folds them so no line
on the wire is longer, the decoded content is what the producer meant, and the parts
without a long line go out byte for byte; what cannot be shortened safely is refused."""

from __future__ import annotations

import base64
import email
import email.policy
import re
import time

import dkim
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta.dkim.signature import generate, sign_message, unstuff
from mta.intake.longlines import has_long_line, shorten
from mta.intake.message import InvalidMessage, canonical_data, decode

LONG = "word " * 600  # one line of 3,000 octets
RAW_LONG = ("x" * 1500).encode()  # no whitespace at all


def wire(mime: bytes) -> bytes:
    """What the receiver stores: canonical DATA bytes with the dot-stuffing undone."""
    data = canonical_data(mime)
    assert max(len(line) for line in data.split(b"\r\n")) <= 998 + 1  # +1: a stuffed dot is not counted
    received = unstuff(data)
    assert max(len(line) for line in received.split(b"\r\n")) <= 998
    return received


def parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def crlf(text: bytes) -> bytes:
    return text.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def leaves(message) -> list:
    return [part for part in message.walk() if not part.is_multipart()]


# --------------------------------------------------------------------------- the check


@pytest.mark.parametrize(("mime", "long"), [
    (b"", False),
    (b"x" * 998, False),
    (b"x" * 999, True),
    (b"x" * 998 + b"\n", False),
    (b"x" * 999 + b"\n", True),
    (b"a\n" + b"x" * 998, False),
    (b"a\n" + b"x" * 999, True),
    (b"a\n" * 1000 + b"x" * 999 + b"\n" + b"b\n" * 1000, True),
    ((b"x" * 998 + b"\n") * 50, False),
    (b"\n" * 5000, False),
    (b"x" * 500 + b"\n" + b"y" * 998 + b"\n" + b"z" * 997, False),
])
def test_has_long_line(mime: bytes, long: bool) -> None:
    assert has_long_line(mime) is long


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=1200), max_size=12), st.booleans())
def test_has_long_line_is_the_longest_line(lengths: list[int], final_lf: bool) -> None:
    mime = b"\n".join(b"y" * n for n in lengths) + (b"\n" if final_lf else b"")
    assert has_long_line(mime) is (max(lengths, default=0) > 998)


def test_a_message_without_long_lines_is_not_touched() -> None:
    mime = b"Subject: s\n\n" + (b"z" * 998 + b"\n") * 3
    assert canonical_data(mime) == mime.replace(b"\n", b"\r\n")


# --------------------------------------------------------------------------- bodies


def test_single_part_body_becomes_quoted_printable() -> None:
    mime = f"From: <a@s.test>\r\nSubject: long\r\n\r\nshort line\r\n{LONG}\r\nlast\r\n".encode()
    received = wire(mime)
    message = parse(received)
    assert message["Content-Transfer-Encoding"] == "quoted-printable"
    assert message["MIME-Version"] == "1.0"
    assert message.get_content() == parse(mime).get_content()
    assert message.get_payload(decode=True) == crlf(mime.split(b"\r\n\r\n", 1)[1])
    assert received.startswith(b"From: <a@s.test>\r\nSubject: long\r\n")


def test_existing_transfer_encoding_is_replaced_and_mime_version_kept() -> None:
    mime = (b"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding:\n 8bit\n"
            b"Subject: s\n\n" + "Grüße ".encode() * 300 + b"\n")
    received = wire(mime)
    assert received.count(b"MIME-Version") == 1
    assert received.count(b"Content-Transfer-Encoding") == 1 and b"8bit" not in received
    assert parse(received).get_payload(decode=True) == "Grüße ".encode() * 300 + b"\r\n"
    assert received.isascii()


def test_eight_bit_body_without_charset_keeps_its_octets() -> None:
    body = bytes(range(128, 256)) * 10 + b"\n\xff\xfe end\n"
    received = wire(b"Subject: binary-ish\n\n" + body)
    assert parse(received).get_payload(decode=True) == crlf(body)


def test_dot_at_the_start_of_a_long_line() -> None:
    mime = f"Subject: dots\r\n\r\n.{LONG}\r\n..{LONG}\r\n.\r\n".encode()
    data = canonical_data(mime)
    assert data.count(b"\r\n.\r\n") == 0  # no early end of data
    assert all(line[:1] != b"." or line[:2] == b".." for line in data.split(b"\r\n"))
    assert parse(unstuff(data)).get_payload(decode=True) == crlf(mime.split(b"\r\n\r\n", 1)[1])


def test_bare_cr_and_lf_in_a_long_message_are_line_ends() -> None:
    mime = f"Subject: bare\r\n\r\na\rb\n{LONG}\r".encode()
    received = wire(mime)
    assert b"\r" not in received.replace(b"\r\n", b"") and b"\n" not in received.replace(b"\r\n", b"")
    assert parse(received).get_payload(decode=True) == f"a\r\nb\r\n{LONG}\r\n".encode()


def test_base64_and_quoted_printable_lines_are_rewrapped() -> None:
    payload = bytes(range(256)) * 20
    b64 = b"Content-Transfer-Encoding: base64\n\n" + base64.b64encode(payload) + b"\n"
    assert parse(wire(b64)).get_payload(decode=True) == payload
    qp_line = b"caf=C3=A9 =3D " * 150 + b"=E2=82=AC"  # an =XX at every possible cut
    for shift in range(3):
        qp = b"Content-Transfer-Encoding: quoted-printable\n\n" + b"x" * shift + qp_line + b"\nend\n"
        received = wire(qp)
        assert parse(received).get_payload(decode=True) == b"x" * shift + ("café = ".encode() * 150) + "€\r\nend\r\n".encode()
        assert received.count(b"Content-Transfer-Encoding") == 1


def multipart(long_text: bytes) -> bytes:
    return (b"From: <a@s.test>\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b1\"\n\n"
            b"preamble\n"
            b"--b1\nContent-Type: text/plain; charset=us-ascii\n\nshort part\nstays as it is \n"
            b"--b1\nContent-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n" + long_text + b"\n"
            b"--b1\nContent-Type: multipart/alternative; boundary=b2\n\n"
            b"--b2\nContent-Type: text/plain\n\ninner short\n"
            b"--b2\nContent-Type: text/plain\n\n" + long_text + b"\n"
            b"--b2--\n"
            b"--b1\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
            + base64.encodebytes(b"\x00\x01attachment" * 100) +
            b"--b1--\nepilogue\n")


def test_multipart_changes_only_the_parts_with_a_long_line() -> None:
    long_text = "<p>".encode() + "éà ".encode() * 500 + b"</p>"
    mime = multipart(long_text)
    received = wire(mime)
    original, message = parse(crlf(mime)), parse(received)
    before, after = leaves(original), leaves(message)
    assert len(before) == len(after) == 5
    for old, new in zip(before, after):
        assert new.get_payload(decode=True) == old.get_payload(decode=True)
        assert new.get_content_type() == old.get_content_type()
    encodings = [part["Content-Transfer-Encoding"] for part in after]
    assert encodings == [None, "quoted-printable", None, "quoted-printable", "base64"]
    # untouched parts and the structure around them, byte for byte
    for kept in (b"preamble\r\n--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nshort part\r\nstays as it is \r\n--b1\r\n",
                 b"--b2\r\nContent-Type: text/plain\r\n\r\ninner short\r\n--b2\r\n",
                 crlf(base64.encodebytes(b"\x00\x01attachment" * 100)) + b"--b1--\r\nepilogue\r\n"):
        assert kept in received
    assert b"MIME-Version: 1.0" in received and received.count(b"MIME-Version") == 1


def test_long_preamble_is_broken_and_parts_stay() -> None:
    mime = (b"Content-Type: multipart/mixed; boundary=zz\n\n" + b"p" * 2500 + b"\n--zz\n\nonly part\n--zz--\n")
    received = wire(mime)
    assert received.endswith(b"\r\n--zz\r\n\r\nonly part\r\n--zz--\r\n")
    assert [p.get_payload(decode=True) for p in leaves(parse(received))] == [b"only part"]


def test_embedded_message_is_handled_as_a_message() -> None:
    inner = f"Subject: inner\n\n{LONG}\n".encode()
    mime = (b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=o\n\n--o\nContent-Type: message/rfc822\n\n"
            + inner + b"--o--\n")
    received = wire(mime)
    attached = parse(received).get_payload()[0]
    assert attached["Content-Transfer-Encoding"] is None  # RFC 2046 §5.2.1: never encoded itself
    (embedded,) = attached.get_payload()
    assert embedded["Content-Transfer-Encoding"] == "quoted-printable"
    assert embedded.get_payload(decode=True) == LONG.encode()  # its last LF belongs to the delimiter


# --------------------------------------------------------------------------- headers


def unfold(header_block: bytes) -> bytes:
    return re.sub(rb"\r\n(?=[ \t])", b"", header_block)


def test_long_header_is_folded_at_whitespace() -> None:
    refs = " ".join(f"<id{i}.{'x' * 30}@example.test>" for i in range(60))
    subject = "Grüße " + "long  subject\twith spaces " * 60
    mime = f"From: <a@s.test>\nSubject: {subject}\nReferences: {refs}\n\nbody\n".encode()
    received = wire(mime)
    head = received.split(b"\r\n\r\n", 1)[0]
    assert unfold(head) == crlf(mime.split(b"\n\n", 1)[0])
    assert max(len(line) for line in head.split(b"\r\n")) <= 78
    assert all(line.strip() for line in head.split(b"\r\n"))  # no whitespace-only continuation line
    assert received.endswith(b"\r\n\r\nbody\r\n")


def test_header_with_a_long_token_is_folded_around_it() -> None:
    mime = b"X-Token: a " + b"t" * 990 + b" tail\n\nbody\n"
    head = wire(mime).split(b"\r\n\r\n", 1)[0]
    assert unfold(head) == mime.split(b"\n\n", 1)[0]


@pytest.mark.parametrize("mime", [
    b"Subject: " + RAW_LONG + b"\n\nbody\n",
    b"Content-Transfer-Encoding: x-uuencode\n\n" + RAW_LONG + b"\n",
    b"Content-Type: message/partial; id=x; number=1\n\n" + RAW_LONG + b"\n",
    b"Content-Type: multipart/mixed; boundary=nowhere\n\n" + RAW_LONG + b"\n",
    b"Content-Type: multipart/mixed\n\n" + RAW_LONG + b"\n",
])
def test_what_cannot_be_shortened_safely_is_refused(mime: bytes) -> None:
    with pytest.raises(InvalidMessage, match="998"):
        canonical_data(mime)


def test_refusal_reaches_the_producer_as_an_invalid_message() -> None:
    doc = {"recipient": "u@example.com", "envelope": "b@s.example", "mime": f"Subject: {'s' * 1200}\n\nhi\n"}
    with pytest.raises(InvalidMessage, match="header field 'Subject'"):
        decode(orjson.dumps(doc), {}, "bulk", 0.0)


# --------------------------------------------------------------------------- DKIM and properties


def test_shortened_message_is_signed_as_sent() -> None:
    key = generate("s.test", "k1", "ed25519-sha256")
    mime = multipart(b"z " * 800)
    message = unstuff(canonical_data(mime))
    signed = sign_message(message, [key], int(time.time())) + message
    assert dkim.DKIM(signed).verify(dnsfunc=lambda name, timeout=5: key.dns_txt().encode())


_line = st.one_of(
    st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")),
    st.tuples(st.sampled_from([b"a ", b".", b"=", b"\xe9", b" ", b"\t", b"ab"]), st.integers(500, 1500)).map(lambda t: t[0] * t[1]),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_line, min_size=1, max_size=6), st.booleans())
def test_any_body_arrives_as_meant(lines: list[bytes], headers: bool) -> None:
    body = b"\n".join(lines) + b"\n"
    mime = (b"From: <a@s.test>\nContent-Type: text/plain; charset=iso-8859-1\n\n" if headers else b"\n") + body
    received = wire(mime)
    assert parse(received).get_payload(decode=True) == crlf(body)
    assert shorten(received.replace(b"\r\n", b"\n")) == received.replace(b"\r\n", b"\n")  # nothing left to do


_piece = st.one_of(
    st.sampled_from([b"\n", b"\n\n", b"--b\n", b"--b--\n", b"Content-Type: multipart/mixed; boundary=b\n",
                     b"Content-Type: message/rfc822\n", b"Content-Transfer-Encoding: base64\n",
                     b"Content-Transfer-Encoding: quoted-printable\n", b"Subject: s\n", b" folded\n", b"=\n", b"."]),
    st.binary(max_size=20),
    st.tuples(st.sampled_from([b"a ", b"x", b"=4", b"\xe9", b"\t"]), st.integers(300, 1100)).map(lambda t: t[0] * t[1]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_piece, max_size=25).map(b"".join))
def test_any_input_is_shortened_or_refused_with_a_reason(mime: bytes) -> None:
    try:
        data = canonical_data(mime)
    except InvalidMessage as exc:
        assert "998" in str(exc)
        return
    assert max(len(line) for line in unstuff(data).split(b"\r\n")) <= 998


def test_eight_bit_body_re_encoded_needs_no_8bitmime() -> None:
    mime = "Subject: s\nContent-Type: text/plain; charset=utf-8\n\n" + "Grüße " * 300 + "\n"
    doc = {"recipient": "u@example.com", "envelope": "b@s.example", "mime": mime}
    assert decode(orjson.dumps(doc), {}, "bulk", 0.0).eight_bit is False
    doc["mime"] = mime.replace("Grüße " * 300, "Grüße")
    assert decode(orjson.dumps(doc), {}, "bulk", 0.0).eight_bit is True


# --------------------------------------------------------------------------- big messages: no long C call, no deep recursion


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from([b"a", b" ", b"\t", b"=", b"\n", b"\xff", b"x" * 90, b"y " * 50]), max_size=80).map(b"".join),
       st.integers(min_value=1, max_value=200))
def test_quoted_printable_in_pieces_decodes_to_the_same_octets(body: bytes, piece: int) -> None:
    import binascii

    from mta.intake import longlines

    saved = longlines.QP_PIECE
    longlines.QP_PIECE = piece
    try:
        encoded = longlines._encode_qp(body)
    finally:
        longlines.QP_PIECE = saved
    assert binascii.a2b_qp(encoded) == binascii.a2b_qp(binascii.b2a_qp(body, istext=True))
    # 76 as RFC 2045 says (b2a_qp alone writes up to 78 where a full line ends in a blank)
    assert max(len(line) for line in encoded.split(b"\n")) <= 76


def test_quoted_printable_after_a_line_end_is_unchanged_by_pieces() -> None:
    from mta.intake import longlines

    body = (b"x" * 1500 + b" \n") * 2000  # 3 MB: a dozen pieces, each cut after a line end
    pieces = longlines._encode_qp(body)
    saved = longlines.QP_PIECE
    longlines.QP_PIECE = len(body)
    try:
        whole = longlines._encode_qp(body)
    finally:
        longlines.QP_PIECE = saved
    assert pieces == whole
    assert __import__("binascii").a2b_qp(pieces) == body


def _nested(depth: int) -> bytes:
    head = b"From: a@example.com\nMIME-Version: 1.0\n"
    inner = b"Content-Type: text/plain\n\n" + b"x" * 1200 + b"\n"
    for level in range(depth):
        b = f"b{level}".encode()
        inner = (b"Content-Type: multipart/mixed; boundary=" + b + b"\n\n--" + b + b"\n" + inner
                 + b"--" + b + b"--\n")
    return head + inner


def test_nesting_within_the_limit_is_repaired() -> None:
    out = shorten(_nested(50))
    assert not has_long_line(out)
    assert parse(crlf(out)).get_payload()  # still a message a reader can walk


def test_nesting_beyond_the_limit_is_refused_with_the_reason() -> None:
    with pytest.raises(InvalidMessage, match="nested more than 50 levels"):
        decode(orjson.dumps({"recipient": "u@example.com", "envelope": "", "mime": _nested(51).decode()}),
               {}, "bulk", 0.0)


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    with pytest.raises(InvalidMessage, match="nested more than 50 levels"):
        decode(orjson.dumps({"recipient": "u@example.com", "envelope": "", "mime": _nested(2000).decode()}),
               {}, "bulk", 0.0)
