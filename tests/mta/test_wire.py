"""The wire form (mta.intake.wire): the one-byte passes give exactly the octets of the plain
definition (every CRLF, bare CR and bare LF one LF; a long line shortened; a dot that
starts a line doubled; LF to CRLF; a CRLF at the end), on random and adversarial inputs."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta.intake import wire
from mta.intake.address import InvalidMessage
from mta.intake.longlines import Unsendable, has_long_line, shorten
from mta.intake.wire import DOT_PROBES, canonical_data, lf_form, line_dot


def reference(mime: bytes) -> bytes:
    """The plain definition, two-byte passes and all (canonical_data as it was written first)."""
    if b"\r" in mime:
        mime = mime.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if has_long_line(mime):
        try:
            mime = shorten(mime)
        except Unsendable as exc:
            raise InvalidMessage(str(exc)) from None
    mime = mime.replace(b"\n.", b"\n..")
    if mime.startswith(b"."):
        mime = b"." + mime
    data = mime.replace(b"\n", b"\r\n")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def same(mime: bytes) -> None:
    try:
        expected = reference(mime)
    except InvalidMessage as exc:
        with pytest.raises(InvalidMessage, match=str(exc)[:40]):
            canonical_data(mime)
        return
    assert canonical_data(mime) == expected


_PIECES = [b"\r", b"\n", b"\r\n", b"\n\r", b".", b"..", b"a", b" ", b"\x00", b"\xff", b"x" * 7]
_mime = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from(_PIECES), max_size=120).map(b"".join),
    # CRLF-only text (the fast path), now and then a bare CR or LF or a dot among it
    st.lists(st.sampled_from([b"ab\r\n", b".x\r\n", b"\r\n", b"a.b\r\n", b"..\r\n", b"y"]), max_size=80).map(b"".join),
    st.lists(st.sampled_from([b"ab\n", b"a.b.c\n", b".\n", b"x. y\n", b"z"]), max_size=80).map(b"".join),
)


@settings(max_examples=3000, deadline=None)
@given(_mime)
def test_same_octets_as_the_plain_definition(mime: bytes) -> None:
    same(mime)


@pytest.mark.parametrize("dots", [0, 1, DOT_PROBES - 2, DOT_PROBES - 1, DOT_PROBES, DOT_PROBES + 1, DOT_PROBES + 5, 200])
@pytest.mark.parametrize("ends", [b"\n", b"\r\n", b"\r"])
def test_a_line_dot_behind_many_dots_is_found(dots: int, ends: bytes) -> None:
    # The dots inside lines use up the probes one by one; the line dot comes next, at the
    # boundary between looking at dots and the regular expression, and just after it.
    head = b"Subject: x" + ends + ends + b"".join(b"a.b" + ends for _ in range(dots))
    for tail in (b".x" + ends, b"." + ends, b"y" + ends + b".z", b"."):
        same(head + tail)
        assert canonical_data(head + tail).count(b"\r\n..") == 1
    same(head)
    assert b"\r\n.." not in canonical_data(head)


@pytest.mark.parametrize("mime", [
    b"", b".", b"..", b"\r", b"\n", b"\r\n", b"\n\r", b"\r\r\n", b"\r\n\n", b"a\r", b"a\r\n\r", b".\r", b"\r.",
    b"\r\n.", b"\n.", b"\r.\r", b"a\r\nb\nc", b"a\r\nb\rc\r\n", b"a\r\nb\r\n\r", b"x" * 1000 + b"\r\n",
    b"a\r\n" * 50 + b"\n", b"a\r\n" * 50 + b"\r", b"\r\n" + b".\r\n" * 30, b"." * 40 + b"\n.", b"a." * 40 + b"\r\n.",
])
def test_adversarial(mime: bytes) -> None:
    same(mime)


def test_random_large_messages() -> None:
    rng = random.Random(21)
    alphabet = b"ab .\r\n\t\xc3"
    for _ in range(200):
        size = rng.choice([10, 999, 1000, 5000, 102400])
        weights = [rng.random() for _ in alphabet]
        mime = bytes(rng.choices(alphabet, weights, k=size))
        same(mime)
        same(mime.replace(b"\r", b"").replace(b"\n", b"\r\n"))  # CRLF-only, dots and all


def test_crlf_only_input_is_its_own_wire_form() -> None:
    mime = b"Subject: x\r\n\r\n" + b"line of text. more\r\n" * 5000
    assert canonical_data(mime) is mime  # not copied again
    assert canonical_data(mime[:-2]) == mime


@pytest.mark.parametrize("mime", [b"a\r\nb\nc\r\n", b"a\r\nb\rc\r\n", b"a\r\r\nb\r\n", b"\n\r\n"])
def test_a_bare_line_end_among_crlf_is_not_taken_for_crlf_only(mime: bytes) -> None:
    lf, unchanged = lf_form(mime)
    assert unchanged is None
    assert lf == mime.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


@pytest.mark.parametrize(("mime", "found"), [
    (b".a", False), (b"a\n.", True), (b"a.b\nc", False), (b"\n.", True), (b"a" + b".a" * 100 + b"\n.", True),
    (b"a" + b".a" * 100, False), (b"." * 100, False), (b"." * 100 + b"\n", False), (b"." * 100 + b"\n.", True),
])
def test_line_dot(mime: bytes, found: bool) -> None:
    assert line_dot(mime) is found
    assert (b"\n." in mime) is found


def test_the_probes_are_bounded(monkeypatch) -> None:
    # Past DOT_PROBES dots the regular expression searches the rest in one call.
    calls = []
    real = wire._LINE_DOT

    class Spy:
        def search(self, mime, at):
            calls.append(at)
            return real.search(mime, at)

    monkeypatch.setattr(wire, "_LINE_DOT", Spy())
    mime = b"x" + b"a." * (DOT_PROBES + 3) + b"\n.y"
    assert line_dot(mime)
    assert len(calls) == 1
    assert calls[0] == mime.index(b".", 1 + 2 * DOT_PROBES) - 1
