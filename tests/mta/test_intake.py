"""Intake (SPEC §1, RELIABILITY 8 and 9): a consumed body becomes a validated Job or an
InvalidMessage naming the field at fault, and the MIME becomes the canonical DATA payload
(CRLF only, dot-stuffed once) before anything is signed or sent."""

from __future__ import annotations

import base64
from decimal import Decimal
import re
import uuid

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mta.intake.address import parse_address
from mta.intake.message import (
    H_ATTEMPTS,
    H_FIRST,
    H_ID,
    H_RESULTS,
    InvalidMessage,
    Job,
    canonical_data,
    decode,
)

NOW = 1_700_000_000.0
MIME = "From: a@sender.example\nTo: b@example.com\nSubject: hi\n\nHello\n"


def body(**fields) -> bytes:
    doc = {"recipient": "user@example.com", "envelope": "bounce@sender.example", "mime": MIME}
    for key, value in fields.items():
        if value is DROP:
            doc.pop(key, None)
        else:
            doc[key] = value
    return orjson.dumps(doc)


DROP = object()


def ok(raw: bytes, headers: dict | None = None, lane: str = "bulk") -> Job:
    return decode(raw, headers or {}, lane, NOW)


def reason(raw: bytes, headers: dict | None = None) -> str:
    with pytest.raises(InvalidMessage) as info:
        decode(raw, headers or {}, "bulk", NOW)
    return str(info.value)


# --------------------------------------------------------------------------- valid messages


def test_plain_message_fields() -> None:
    raw = body(campaign="spring", id="m-1")
    job = ok(raw, lane="single")
    assert job.recipient.text == "user@example.com"
    assert job.recipient.local == "user"
    assert job.recipient.ascii_domain == "example.com"
    assert job.domain == "example.com"
    assert job.recipient.utf8 is False
    assert job.sender.text == "bounce@sender.example"
    assert job.sender.ascii_domain == "sender.example"
    assert job.data == MIME.replace("\n", "\r\n").encode()
    assert job.size == len(MIME.encode())
    assert job.eight_bit is False
    assert job.id == "m-1"
    assert job.lane == "single"
    assert job.body == raw
    assert job.doc["campaign"] == "spring"  # passed through for the results
    assert job.tags == ()
    assert job.retries is None
    assert job.max_age is None
    assert job.max_attempts == 0
    assert job.attempts == 0
    assert job.first_seen == NOW
    assert job.history == []
    assert job.destination is None


@pytest.mark.parametrize(
    ("recipient", "ascii_domain", "wire"),
    [
        ("user@Example.COM", "example.com", "user@example.com"),
        ("user@example.com.", "example.com", "user@example.com"),
        ("user@bücher.example", "xn--bcher-kva.example", "user@xn--bcher-kva.example"),
        ("user@BÜCHER.example", "xn--bcher-kva.example", "user@xn--bcher-kva.example"),
        ("user@例え.jp", "xn--r8jz45g.jp", "user@xn--r8jz45g.jp"),
        ("user@xn--bcher-kva.example", "xn--bcher-kva.example", "user@xn--bcher-kva.example"),
        ("first.last+tag@sub.example.co.uk", "sub.example.co.uk", "first.last+tag@sub.example.co.uk"),
        ("o'hara@example.com", "example.com", "o'hara@example.com"),
        ('"quoted string"@example.com', "example.com", '"quoted string"@example.com'),
        ('"a\\"b"@example.com', "example.com", '"a\\"b"@example.com'),
        ("user@[192.0.2.1]", "[192.0.2.1]", "user@[192.0.2.1]"),
        ("user@[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]", "user@[IPv6:2001:db8::1]"),
        ("user@[IPv6:::ffff:192.0.2.1]", "[IPv6:::ffff:192.0.2.1]", "user@[IPv6:::ffff:192.0.2.1]"),
        ("user@[0.0.0.0]", "[0.0.0.0]", "user@[0.0.0.0]"),
        ("user@[255.255.255.255]", "[255.255.255.255]", "user@[255.255.255.255]"),
        # IDNA 2008 / UTS #46 non-transitional: ß and ς are letters of their own, not ss and σ
        ("user@faß.de", "xn--fa-hia.de", "user@xn--fa-hia.de"),
        ("user@FAß.de", "xn--fa-hia.de", "user@xn--fa-hia.de"),
        ("user@βόλος.com", "xn--nxasmm1c.com", "user@xn--nxasmm1c.com"),
        ("user@1-2.example", "1-2.example", "user@1-2.example"),
    ],
)
def test_recipient_domain_forms(recipient: str, ascii_domain: str, wire: str) -> None:
    job = ok(body(recipient=recipient))
    assert job.recipient.ascii_domain == ascii_domain
    assert job.domain == ascii_domain
    assert job.recipient.utf8 is False  # an IDN domain alone does not need SMTPUTF8
    assert job.recipient.text == wire
    assert job.recipient.text.isascii()  # goes out in a plain ASCII RCPT TO


def test_large_integers_are_kept_exactly() -> None:
    # Beyond 2**53 a double cannot hold them; beyond 2**64 orjson would make them floats.
    raw = b'{"recipient": "user@example.com", "envelope": "", "mime": "x", "id": 9007199254740993, ' \
          b'"big": 123456789012345678901234567890, "nested": {"n": [-18446744073709551617]}}'
    job = ok(raw)
    assert job.id == "9007199254740993"
    assert job.doc["id"] == 9007199254740993
    assert job.doc["big"] == 123456789012345678901234567890
    assert job.doc["nested"]["n"] == [-18446744073709551617]


def test_idn_sender_domain_is_ascii_on_the_wire() -> None:
    job = ok(body(envelope="bounce@bücher.example"))
    assert job.sender.utf8 is False
    assert job.sender.text == "bounce@xn--bcher-kva.example"


@pytest.mark.parametrize("recipient", ["jöran@example.com", "用户@例子.广告", "δοκιμή@παράδειγμα.δοκιμή", '"é x"@example.com'])
def test_smtputf8_local_part_sets_utf8(recipient: str) -> None:
    job = ok(body(recipient=recipient))
    assert job.recipient.utf8 is True
    assert job.recipient.local == recipient.rpartition("@")[0]
    assert job.recipient.ascii_domain.isascii()
    assert job.recipient.text.startswith(job.recipient.local + "@")


def test_smtputf8_sender() -> None:
    job = ok(body(envelope="jöran@sender.example"))
    assert job.sender.utf8 is True
    assert job.recipient.utf8 is False


def test_null_sender() -> None:
    job = ok(body(envelope=""))
    assert job.sender is None


def test_mime_b64_is_decoded() -> None:
    payload = b"Subject: bin\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\xff\xfe caf\xc3\xa9\n.hidden\n"
    job = ok(body(mime=DROP, mime_b64=base64.b64encode(payload).decode()))
    assert job.data == b"Subject: bin\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\xff\xfe caf\xc3\xa9\r\n..hidden\r\n"
    assert job.eight_bit is True
    assert job.size == len(payload)


def test_utf8_mime_is_eight_bit() -> None:
    job = ok(body(mime="Subject: caf\u00e9\n\nna\u00efve\n"))
    assert job.eight_bit is True
    assert job.data == "Subject: caf\u00e9\r\n\r\nna\u00efve\r\n".encode()


@pytest.mark.parametrize(("given", "expected"), [("abc-123", "abc-123"), (42, "42"), ("ü-1", "ü-1")])
def test_id_is_echoed(given, expected: str) -> None:
    assert ok(body(id=given)).id == expected


def test_id_is_derived_from_the_body_when_absent() -> None:
    first, again = ok(body()), ok(body())
    assert uuid.UUID(first.id).version == 5  # name-based: the same body, the same id
    assert first.id == again.id  # a redelivered copy is recognised by its id
    assert ok(body(tags=["other"])).id != first.id


def test_id_from_the_amqp_message_id_property() -> None:
    assert decode(body(), {}, "bulk", NOW, message_id="amqp-17").id == "amqp-17"
    assert decode(body(id="mine"), {}, "bulk", NOW, message_id="amqp-17").id == "mine"


@pytest.mark.parametrize("carried", ["7d0c6a1e-0000-4000-8000-000000000001", b"7d0c6a1e-0000-4000-8000-000000000001"])
def test_generated_id_is_carried_by_header_on_retries(carried) -> None:
    job = decode(body(), {H_ID: carried}, "bulk", NOW, message_id="a-publish-id")
    assert job.id == "7d0c6a1e-0000-4000-8000-000000000001"


def test_producer_id_wins_over_header() -> None:
    assert ok(body(id="mine"), {H_ID: "other"}).id == "mine"


def death(queue: str = "mta.delay.bulk.600s", reason: str = "expired") -> dict:
    """The x-death header the broker writes when a delay queue's TTL dead-letters a copy."""
    return {"x-death": [{"count": 1, "reason": reason, "queue": queue, "exchange": "",
                         "routing-keys": [queue]}],
            "x-first-death-queue": queue, "x-first-death-reason": reason, "x-first-death-exchange": ""}


HISTORY = [{"time": "2024-01-01T00:00:00Z", "phase": "rcpt", "code": 451, "enhanced": "4.7.1",
            "description": "try later", "mx": "mx.example.com", "ip": "192.0.2.1", "lane": "bulk"}]


def test_retry_headers_are_restored() -> None:
    headers = {H_ID: "carried", H_ATTEMPTS: 3, H_FIRST: 1_699_999_000_123, H_RESULTS: orjson.dumps(HISTORY).decode(),
               **death()}
    job = ok(body(), headers)
    assert job.id == "carried"
    assert job.attempts == 3
    assert job.first_seen == pytest.approx(1_699_999_000.123)
    assert job.history == HISTORY


def test_retry_headers_as_bytes() -> None:
    headers = {H_ATTEMPTS: b"2", H_FIRST: b"1699999000000", H_RESULTS: b"[]", **death()}
    headers["x-death"][0]["queue"] = b"mta.delay.bulk.600s"
    job = ok(body(), headers)
    assert (job.attempts, job.first_seen, job.history) == (2, 1_699_999_000.0, [])


FORGED = {H_ATTEMPTS: 999, H_FIRST: 1000, H_RESULTS: orjson.dumps(HISTORY).decode()}


@pytest.mark.parametrize(
    "path",
    [
        {},  # a producer's publish
        death(queue="mta.bulk", reason="delivery_limit"),  # quarantined, then replayed with its x-death
        death(queue="mta.delay.single.600s"),  # another lane's delay queue
        death(queue="elsewhere.delay.bulk.600s"),  # not ours
        death(reason="rejected"),
        {"x-death": "mta.delay.bulk.600s"},
        {"x-death": []},
    ],
)
def test_producer_set_internal_headers_are_ignored(path: dict) -> None:
    # x-mta-attempts: 999 and a first acceptance in 1970 must not expire the message at once.
    job = ok(body(), {**FORGED, **path})
    assert (job.attempts, job.first_seen, job.history) == (0, NOW, [])


def test_first_acceptance_is_never_in_the_future() -> None:
    job = ok(body(), {H_FIRST: int((NOW + 86400) * 1000), **death()})
    assert job.first_seen == NOW


def test_negative_attempts_count_as_none() -> None:
    assert ok(body(), {H_ATTEMPTS: -5, **death()}).attempts == 0


@pytest.mark.parametrize(
    ("fields", "attr", "expected"),
    [
        ({"tags": ["newsletter", "q1"]}, "tags", ("newsletter", "q1")),
        ({"tags": []}, "tags", ()),
        ({"retries": [60, 300, 1.5]}, "retries", (60.0, 300.0, 1.5)),
        ({"maxdelivertime": 3600}, "max_age", 3600.0),
        ({"maxdelivertime": 0.5}, "max_age", 0.5),
        ({"maxdelivertime": 4294967.295}, "max_age", 4294967.295),  # 2^32-1 ms: the longest
        ({"retries": [4294967.295]}, "retries", (4294967.295,)),
        ({"maxattempts": 0}, "max_attempts", 0),
        ({"maxattempts": 5}, "max_attempts", 5),
        ({"retries": None}, "retries", None),
        ({"maxdelivertime": None}, "max_age", None),
    ],
)
def test_overrides(fields: dict, attr: str, expected) -> None:
    assert getattr(ok(body(**fields)), attr) == expected


@pytest.mark.parametrize("dkim", [False, None, {"domain": "sender.example", "selector": "s2026"}])
def test_dkim_accepted(dkim) -> None:
    assert ok(body(dkim=dkim)).doc["dkim"] == dkim


# --------------------------------------------------------------------------- invalid messages


def _raw(text: str) -> bytes:
    return text.encode()


INVALID: list[tuple[str, bytes, str]] = [
    ("not json", b"this is not json", "JSON"),
    ("truncated json", b'{"recipient": "a@b.example"', "JSON"),
    ("not utf-8", b'{"recipient": "\xff@example.com"}', "JSON"),
    ("empty body", b"", "JSON"),
    ("array", b'[{"recipient": "user@example.com"}]', "object"),
    ("string", b'"user@example.com"', "object"),
    ("null", b"null", "object"),
    ("missing recipient", body(recipient=DROP), "recipient"),
    ("missing envelope", body(envelope=DROP), "envelope"),
    ("both mime and mime_b64", body(mime_b64=base64.b64encode(b"x").decode()), "mime"),
    ("neither mime nor mime_b64", body(mime=DROP), "mime"),
    ("recipient null", body(recipient=None), "recipient"),
    ("recipient number", body(recipient=5), "recipient"),
    ("recipient list", body(recipient=["user@example.com"]), "recipient"),
    ("envelope null", body(envelope=None), "envelope"),
    ("envelope false", body(envelope=False), "envelope"),
    ("recipient CRLF", body(recipient="user@example.com\r\nRCPT TO:<evil@example.com>"), "recipient"),
    ("recipient LF", body(recipient="user@example.com\n"), "recipient"),
    ("recipient CR", body(recipient="us\rer@example.com"), "recipient"),
    ("recipient NUL", body(recipient="user\x00@example.com"), "recipient"),
    ("envelope CRLF", body(envelope="a@sender.example\r\nDATA"), "envelope"),
    ("envelope LF", body(envelope="a@sender.example\n"), "envelope"),
    ("envelope NUL", body(envelope="a\x00@sender.example"), "envelope"),
    ("recipient space", body(recipient="us er@example.com"), "recipient"),
    ("recipient trailing space", body(recipient="user@example.com "), "recipient"),
    ("recipient leading space", body(recipient=" user@example.com"), "recipient"),
    ("recipient tab", body(recipient="us\ter@example.com"), "recipient"),
    ("recipient angle brackets", body(recipient="<user@example.com>"), "recipient"),
    ("recipient closing bracket", body(recipient="user@example.com>"), "recipient"),
    ("recipient display name", body(recipient="User <user@example.com>"), "recipient"),
    ("envelope angle brackets", body(envelope="<a@sender.example>"), "envelope"),
    ("envelope space", body(envelope="a b@sender.example"), "envelope"),
    ("no at sign", body(recipient="user.example.com"), "recipient"),
    ("empty local part", body(recipient="@example.com"), "recipient"),
    ("empty domain", body(recipient="user@"), "recipient"),
    ("empty recipient", body(recipient=""), "recipient"),
    ("local part 65 octets", body(recipient="a" * 65 + "@example.com"), "recipient"),
    ("local part 65 octets in UTF-8", body(recipient="ü" * 33 + "@example.com"), "recipient"),
    ("address 255 octets", body(recipient="a@" + ".".join(["b" * 63] * 3) + "." + "c" * 61), "recipient"),
    ("address over 254 once punycoded", body(recipient="a@" + "ü." * 80 + "example"), "recipient"),  # 249 octets in UTF-8
    ("leading dot local", body(recipient=".user@example.com"), "recipient"),
    ("trailing dot local", body(recipient="user.@example.com"), "recipient"),
    ("double dot local", body(recipient="us..er@example.com"), "recipient"),
    ("comma in local", body(recipient="a,b@example.com"), "recipient"),
    ("parenthesis in local", body(recipient="a(comment)@example.com"), "recipient"),
    ("unbalanced quote", body(recipient='"abc@example.com'), "recipient"),
    ("control char in quotes", body(recipient='"a\x01b"@example.com'), "recipient"),
    ("tab in quotes", body(recipient='"a\tb"@example.com'), "recipient"),
    ("DEL in local", body(recipient="a\x7fb@example.com"), "recipient"),
    ("utf8 local with comma", body(recipient="é,x@example.com"), "recipient"),
    ("utf8 local with bracket", body(recipient="é<x@example.com"), "recipient"),
    ("utf8 local with NBSP", body(recipient="é\u00a0x@example.com"), "recipient"),
    ("utf8 local with zero-width space", body(recipient="é\u200bx@example.com"), "recipient"),
    ("utf8 local with line separator", body(recipient="é\u2028x@example.com"), "recipient"),
    ("single-label domain", body(recipient="user@localhost"), "recipient"),
    ("label starts with hyphen", body(recipient="user@-bad.example"), "recipient"),
    ("label ends with hyphen", body(recipient="user@bad-.example"), "recipient"),
    ("empty label", body(recipient="user@bad..example"), "recipient"),
    ("leading dot domain", body(recipient="user@.example.com"), "recipient"),
    ("label 64 octets", body(recipient="user@" + "a" * 64 + ".example"), "recipient"),
    ("underscore in domain", body(recipient="user@exa_mple.com"), "recipient"),
    ("second at sign", body(recipient="user@exa@mple.com"), "recipient"),
    ("bad IDN", body(recipient="user@\u00ad.example"), "recipient"),
    ("IDNA 2008 disallowed symbol", body(recipient="user@\u2665.example"), "recipient"),  # IDNA 2003 took it
    ("IPv4 literal octet over 255", body(recipient="user@[999.1.1.1]"), "recipient"),
    ("IPv4 literal of three octets", body(recipient="user@[192.0.2]"), "recipient"),
    ("IPv4 literal of five octets", body(recipient="user@[192.0.2.1.5]"), "recipient"),
    ("IPv6 literal not an address", body(recipient="user@[IPv6:zzz]"), "recipient"),
    ("IPv6 literal two double colons", body(recipient="user@[IPv6:2001:db8::1::2]"), "recipient"),
    ("IPv6 literal too many groups", body(recipient="user@[IPv6:1:2:3:4:5:6:7:8:9]"), "recipient"),
    ("IPv6 literal without its tag", body(recipient="user@[2001:db8::1]"), "recipient"),
    ("general address literal", body(recipient="user@[x400:c=us]"), "recipient"),
    ("unclosed literal", body(recipient="user@[192.0.2.1"), "recipient"),
    ("bad domain in envelope", body(envelope="a@-sender.example"), "envelope"),
    ("mime not a string", body(mime=["Subject: x"]), "mime"),
    ("mime null", body(mime=None), "mime"),
    ("mime empty", body(mime=""), "empty"),
    ("mime blank", body(mime="\r\n \n"), "empty"),
    ("mime_b64 not base64", body(mime=DROP, mime_b64="not base64!"), "mime_b64"),
    ("mime_b64 bad padding", body(mime=DROP, mime_b64="QUJ"), "mime_b64"),
    ("mime_b64 non-ascii", body(mime=DROP, mime_b64="QUJDé"), "mime_b64"),
    ("mime_b64 number", body(mime=DROP, mime_b64=123), "mime_b64"),
    ("mime_b64 empty", body(mime=DROP, mime_b64=""), "empty"),
    ("retries string", body(retries="60"), "retries"),
    ("retries empty", body(retries=[]), "retries"),
    ("retries zero", body(retries=[60, 0]), "retries"),
    ("retries negative", body(retries=[-1]), "retries"),
    ("retries bool", body(retries=[True]), "retries"),
    ("retries strings", body(retries=["10m"]), "retries"),
    ("retries object", body(retries={"a": 1}), "retries"),
    ("retries past RabbitMQ's TTL", body(retries=[60, 5e6]), "retries"),
    ("retries just past 2^32-1 ms", body(retries=[4294967.296]), "retries"),
    ("maxattempts negative", body(maxattempts=-1), "maxattempts"),
    ("maxattempts float", body(maxattempts=1.5), "maxattempts"),
    ("maxattempts bool", body(maxattempts=True), "maxattempts"),
    ("maxattempts string", body(maxattempts="3"), "maxattempts"),
    ("maxattempts null", body(maxattempts=None), "maxattempts"),
    ("maxdelivertime zero", body(maxdelivertime=0), "maxdelivertime"),
    ("maxdelivertime negative", body(maxdelivertime=-5), "maxdelivertime"),
    ("maxdelivertime string", body(maxdelivertime="1h"), "maxdelivertime"),
    ("maxdelivertime bool", body(maxdelivertime=True), "maxdelivertime"),
    ("maxdelivertime past RabbitMQ's TTL", body(maxdelivertime=1e7), "maxdelivertime"),
    ("tags string", body(tags="newsletter"), "tags"),
    ("tags numbers", body(tags=[1, 2]), "tags"),
    ("tags object", body(tags={"a": "b"}), "tags"),
    ("tags null", body(tags=None), "tags"),
    ("dkim true", body(dkim=True), "dkim"),
    ("dkim string", body(dkim="sender.example"), "dkim"),
    ("dkim empty object", body(dkim={}), "dkim"),
    ("dkim without selector", body(dkim={"domain": "sender.example"}), "dkim"),
    ("dkim selector number", body(dkim={"domain": "sender.example", "selector": 1}), "dkim"),
    ("id empty", body(id=""), "id"),
    ("id bool", body(id=True), "id"),
    ("id float", body(id=1.5), "id"),
    ("id list", body(id=["x"]), "id"),
    ("id object", body(id={"x": 1}), "id"),
]


@pytest.mark.parametrize(("raw", "field"), [(r, f) for _, r, f in INVALID], ids=[name for name, _, _ in INVALID])
def test_invalid_message_names_the_field(raw: bytes, field: str) -> None:
    text = reason(raw)
    assert field in text, text


@pytest.mark.parametrize(
    ("field", "value"),
    [("recipient", "user@example.com\r\nRCPT TO:<evil@example.com>"), ("envelope", "a@sender.example\r\nDATA")],
)
def test_crlf_reason_names_the_field_first(field: str, value: str) -> None:
    assert reason(body(**{field: value})).startswith(f"{field}: ")


def test_lone_surrogate_in_mime_is_invalid() -> None:
    # JSON can spell a lone surrogate; it cannot be sent as UTF-8, so the body is refused.
    raw = b'{"recipient": "user@example.com", "envelope": "", "mime": "Subject: x\\n\\n\\ud800\\n"}'
    text = reason(raw)
    assert "surrogate" in text


def test_lone_surrogate_raw_utf8_is_invalid() -> None:
    raw = b'{"recipient": "user@example.com", "envelope": "", "mime": "x\xed\xa0\x80"}'
    reason(raw)


@pytest.mark.parametrize(
    ("headers", "name"),
    [
        ({H_ATTEMPTS: "many"}, H_ATTEMPTS),
        ({H_ATTEMPTS: [1]}, H_ATTEMPTS),
        ({H_FIRST: "yesterday"}, H_FIRST),
        ({H_RESULTS: "not json"}, H_RESULTS),
        ({H_RESULTS: '{"a": 1}'}, H_RESULTS),
        ({H_RESULTS: 5}, H_RESULTS),
    ],
)
def test_malformed_mta_headers_are_invalid_not_a_crash(headers: dict, name: str) -> None:
    assert name in reason(body(), {**headers, **death()})


def test_decode_reports_the_first_problem_only_and_does_not_mutate_doc() -> None:
    raw = body(recipient="bad", envelope="also bad")
    assert reason(raw).startswith("recipient: ")


# --------------------------------------------------------------------------- parse_address directly


def test_parse_address_field_name_in_reason() -> None:
    with pytest.raises(InvalidMessage, match=r"^rcpt: "):
        parse_address("nope", "rcpt")


@pytest.mark.parametrize("length", [64])
def test_local_part_limit_is_inclusive(length: int) -> None:
    assert parse_address("a" * length + "@example.com", "recipient").local == "a" * length


def test_address_limit_is_inclusive() -> None:
    domain = ".".join(["b" * 63] * 3) + "." + "c" * 60  # 252 octets
    address = "a@" + domain
    assert len(address) == 254
    assert parse_address(address, "recipient").ascii_domain == domain


_WIRE_SAFE = re.compile(r"[\x00-\x1f\x7f<>]")


@settings(max_examples=500, deadline=None)
@given(st.one_of(
    st.text(max_size=80),
    st.builds(lambda l, d: f"{l}@{d}", st.text(max_size=30), st.text(max_size=40)),
    st.builds(lambda l, d: f"{l}@{d}", st.from_regex(r"[a-z0-9.+\"\\ ]{1,20}", fullmatch=True),
              st.from_regex(r"[a-zü.-]{1,20}\.example", fullmatch=True)),
))
def test_parse_address_property(value: str) -> None:
    try:
        address = parse_address(value, "recipient")
    except InvalidMessage as exc:
        assert str(exc).startswith("recipient: ")
        return
    wire = address.text
    assert _WIRE_SAFE.search(wire) is None, wire
    assert len(wire.encode("utf-8")) <= 254
    assert len(address.local.encode("utf-8")) <= 64
    assert address.ascii_domain.isascii()
    if not address.utf8:
        assert wire.isascii(), "without SMTPUTF8 the address must be ASCII on the wire"
    if " " in wire:
        assert address.local.startswith('"'), "a space only inside a quoted local part"


# --------------------------------------------------------------------------- property: never anything else


def _check_decode(raw: bytes, headers: dict | None = None) -> None:
    try:
        job = decode(raw, headers or {}, "bulk", NOW)
    except InvalidMessage as exc:
        assert str(exc)
        return
    assert isinstance(job, Job)
    assert job.data.endswith(b"\r\n")
    assert isinstance(job.id, str) and job.id


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decode_arbitrary_bytes(raw: bytes) -> None:
    _check_decode(raw)


_json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
)
_json = st.recursive(
    _json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=15,
)
_addresses = st.one_of(
    st.sampled_from(["user@example.com", "", "jöran@bücher.example", "a@[192.0.2.1]", "<x@y.example>", "a@b"]),
    st.text(max_size=40),
    _json,
)
_FIELDS = {
    "recipient": _addresses,
    "envelope": _addresses,
    "mime": st.one_of(st.text(max_size=60), st.sampled_from([MIME, ".\n", "\r\n.\r\n"]), _json),
    "mime_b64": st.one_of(st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()), st.text(max_size=20), _json),
    "id": _json,
    "tags": _json,
    "retries": st.one_of(st.lists(st.one_of(st.integers(-5, 10**6), st.floats(allow_nan=False, allow_infinity=False)), max_size=4), _json),
    "maxdelivertime": _json,
    "maxattempts": st.one_of(st.integers(-3, 10), _json),
    "dkim": st.one_of(st.just(False), st.fixed_dictionaries({"domain": st.text(max_size=5), "selector": st.text(max_size=5)}), _json),
    "extra": _json,
}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.fixed_dictionaries({}, optional=_FIELDS),
    st.fixed_dictionaries({"recipient": st.just("user@example.com"), "envelope": st.just("")},
                          optional={k: v for k, v in _FIELDS.items() if k not in ("recipient", "envelope")}),
    _json,
))
def test_decode_arbitrary_json(doc) -> None:
    _check_decode(orjson.dumps(doc))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([H_ID, H_ATTEMPTS, H_FIRST, H_RESULTS, "other"]),
                       st.one_of(_json_scalars, st.binary(max_size=10), st.lists(_json_scalars, max_size=2)), max_size=5),
       st.booleans())
def test_decode_arbitrary_headers(headers: dict, from_delay_queue: bool) -> None:
    _check_decode(body(), {**headers, **death()} if from_delay_queue else headers)


# --------------------------------------------------------------------------- canonical_data


@pytest.mark.parametrize(
    ("mime", "data"),
    [
        (b"a\nb", b"a\r\nb\r\n"),  # bare LF
        (b"a\rb", b"a\r\nb\r\n"),  # bare CR
        (b"a\r\nb\nc\rd\r\n", b"a\r\nb\r\nc\r\nd\r\n"),  # mixed
        (b"a\r\nb\r\n", b"a\r\nb\r\n"),  # CRLF kept
        (b"a\r\n\r\nb", b"a\r\n\r\nb\r\n"),
        (b"a\n\nb", b"a\r\n\r\nb\r\n"),  # empty lines kept
        (b"a\r\rb", b"a\r\n\r\nb\r\n"),
        (b"a\n\rb", b"a\r\n\r\nb\r\n"),  # LF CR is two line ends, not one
        (b"a", b"a\r\n"),  # trailing CRLF added
        (b"a\r", b"a\r\n"),
        (b"a\n", b"a\r\n"),
        (b".", b"..\r\n"),
        (b".a\r\nb", b"..a\r\nb\r\n"),  # leading dot on the first line
        (b"a\r\n.b", b"a\r\n..b\r\n"),  # leading dot after CRLF
        (b"a\n.b", b"a\r\n..b\r\n"),
        (b"a\r\n..b", b"a\r\n...b\r\n"),  # every leading dot run gets one more
        (b"a\r\n.\r\nb", b"a\r\n..\r\nb\r\n"),  # a lone dot line is not the end
        (b"a\n.\r\nMAIL FROM:<x@evil.example>\r\n", b"a\r\n..\r\nMAIL FROM:<x@evil.example>\r\n"),  # <LF>.<CR><LF>
        (b"a\r\n.\nb", b"a\r\n..\r\nb\r\n"),  # <CR><LF>.<LF>
        (b"a\r.\rb", b"a\r\n..\r\nb\r\n"),  # <CR>.<CR>
        (b"a\n.\nb", b"a\r\n..\r\nb\r\n"),  # <LF>.<LF>
        (b"a\r.\r\nb", b"a\r\n..\r\nb\r\n"),
        (b"x\r\n.", b"x\r\n..\r\n"),
        (b"a.b\r\n", b"a.b\r\n"),  # a dot inside a line is left alone
        (b"\xff\x00\xfe\n", b"\xff\x00\xfe\r\n"),  # 8-bit bytes untouched
    ],
)
def test_canonical_data(mime: bytes, data: bytes) -> None:
    assert canonical_data(mime) == data


def test_smuggling_sequence_has_no_premature_end() -> None:
    data = canonical_data(b"Subject: x\n\nhello\n.\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
    wire = data + b".\r\n"
    assert wire.count(b"\r\n.\r\n") == 1
    assert wire.endswith(b"\r\n.\r\n")
    assert b"\r\n..\r\nMAIL FROM" in data


def _bare(data: bytes) -> bool:
    return re.search(rb"\r(?!\n)|(?<!\r)\n", data) is not None


def _normalised(mime: bytes) -> bytes:
    lines = re.split(rb"\r\n|\r|\n", mime)
    if lines[-1] == b"":
        lines.pop()
    return b"".join(line + b"\r\n" for line in lines)


def _unstuffed(data: bytes) -> bytes:
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in data.split(b"\r\n")[:-1])


_mime_bytes = st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"..", b"a", b" ", b"\x00", b"\xff"]), max_size=40).map(b"".join),
)


@settings(max_examples=1000, deadline=None)
@given(_mime_bytes)
def test_canonical_data_property(mime: bytes) -> None:
    data = canonical_data(mime)
    assert not _bare(data), data
    assert data.endswith(b"\r\n")
    assert b"\r\n.\r\n" not in data
    assert not data.startswith(b".\r\n")
    # With the sender's end-of-data marker appended, the only end of data is that one.
    wire = data + b".\r\n"
    assert wire.find(b"\r\n.\r\n") == len(data) - 2
    # Every line that starts with a dot was stuffed: undoing it gives the normalised input.
    assert all(line[:1] != b"." or line[:2] == b".." for line in data.split(b"\r\n"))
    assert _unstuffed(data) == _normalised(mime) or (mime == b"" and data == b"\r\n")


@given(_mime_bytes)
def test_canonical_data_is_idempotent_on_its_line_ends(mime: bytes) -> None:
    data = canonical_data(mime)
    # Normalising line ends again changes nothing (only dot stuffing is not idempotent).
    assert _normalised(data) == data


# --------------------------------------------------------------------------- results echo what came in


def test_results_echo_large_integers_exactly() -> None:
    from mta.settle.settler import Settler

    raw = b'{"recipient": "user@example.com", "envelope": "", "mime": "x", "id": 9007199254740993, ' \
          b'"big": 123456789012345678901234567890, "small": 42}'
    result = Settler(None, None, 1.0).result(ok(raw), "delivered")
    assert b'"id":9007199254740993' in result
    assert b'"big":123456789012345678901234567890' in result
    assert b'"small":42' in result
    assert orjson.loads(result)["status"] == "delivered"


@pytest.mark.parametrize("size", [0, 1, 2, 3, 1000])
def test_big_base64_decoded_in_pieces_is_the_same(size: int, monkeypatch) -> None:
    import mta.intake.message

    monkeypatch.setattr(mta.intake.message, "B64_PIECE", 8)
    payload = bytes(range(256)) * 3 + b"x" * size
    job = ok(body(mime=DROP, mime_b64=base64.b64encode(payload).decode()))
    assert job.size == len(payload)
    assert canonical_data(payload) == job.data


def test_padding_inside_big_base64_is_invalid(monkeypatch) -> None:
    import mta.intake.message

    monkeypatch.setattr(mta.intake.message, "B64_PIECE", 8)
    text = base64.b64encode(b"abcde").decode() + base64.b64encode(b"Subject: x\n\nhello\n").decode()  # "YWJjZGU=..."
    assert "base64" in reason(body(mime=DROP, mime_b64=text))


@pytest.mark.parametrize("raw", [b"", b"x", b"hello" * 300])
def test_body_id_is_the_rfc_4122_name_based_uuid(raw: bytes) -> None:
    from mta.intake.message import _BODY_IDS, body_id

    assert body_id(raw) == str(uuid.uuid5(uuid.UUID(bytes=_BODY_IDS), raw.decode()))


# --------------------------------------------------------------------------- ids and carried headers in bounds


def raw_id(given) -> bytes:
    """A body whose id is `given`, integers of any size written as such (orjson stops at 64 bits)."""
    return body(id=DROP)[:-1] + b',"id":' + (str(given).encode() if isinstance(given, int) else orjson.dumps(given)) + b"}"


@pytest.mark.parametrize("given", ["x" * 200_000, "x" * 1001, int("9" * 1001), -int("9" * 1001)],
                         ids=["200k", "1001", "int1001", "negative"])
def test_an_id_longer_than_any_copy_can_carry_is_invalid(given) -> None:
    # A retry copy carries the id in its x-mta-id header, inside one broker frame.
    text = reason(raw_id(given))
    assert text.startswith("id: longer than 1000 characters"), text[:200]
    assert len(text) < 200


@pytest.mark.parametrize("given", ["x" * 1000, int("9" * 1000)], ids=["str", "int"])
def test_an_id_of_1000_characters_is_accepted(given) -> None:
    assert ok(raw_id(given)).id == str(given)


def test_a_carried_id_longer_than_any_copy_can_carry_is_invalid() -> None:
    text = reason(body(), {H_ID: "x" * 200_000, **death()})
    assert text.startswith(f"header {H_ID}: longer than 1000 characters"), text[:200]


@pytest.mark.parametrize("first", ["9" * 400, Decimal("1e400"), 10 ** 400, -1000, 0, "0"],
                         ids=["str400", "decimal", "int400", "negative", "zero", "zero-str"])
def test_a_first_acceptance_that_is_no_time_is_ignored(first) -> None:
    # a forged x-death makes a producer's header count; it must not overflow nor age the mail
    job = ok(body(), {H_FIRST: first, **death()})
    assert job.first_seen == NOW


@pytest.mark.parametrize("attempts", ["9" * 400, Decimal("1e400"), 10 ** 7], ids=["str400", "decimal", "1e7"])
def test_carried_attempts_beyond_any_schedule_are_invalid(attempts) -> None:
    assert reason(body(), {H_ATTEMPTS: attempts, **death()}).startswith(f"header {H_ATTEMPTS}: ")


# ---- the checks as one match, and optional fields skipped when absent (once per message)

LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _by_label(domain: str) -> bool:
    """The domain check as it reads in RFC 1035 terms: two labels or more, each valid."""
    labels = domain.split(".")
    return len(labels) >= 2 and all(LABEL.fullmatch(label) for label in labels)


@settings(max_examples=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(alphabet="ab9-._Z", min_size=0, max_size=66), min_size=1, max_size=4).map(".".join)
       .filter(lambda domain: len(domain) <= 240))  # (a longer address is refused for its length)
def test_the_domain_check_is_the_label_by_label_one(domain: str) -> None:
    recipient = f"user@{domain}"
    try:
        parse_address(recipient, "recipient")
        valid = True
    except InvalidMessage:
        valid = False
    expected = _by_label(domain.rstrip(".").lower()) and domain.rstrip(".") != ""
    assert valid == expected, domain


@pytest.mark.parametrize("domain, valid", [
    ("a" * 63 + ".example", True), ("a" * 64 + ".example", False), ("ab-.example", False),
    ("-ab.example", False), ("a-b.example", True), ("a..example", False), ("example", False),
    ("x.y.z.example", True), ("example.", False), ("example.com.", True),
])
def test_domain_labels_at_their_limits(domain: str, valid: bool) -> None:
    try:
        parse_address(f"user@{domain}", "recipient")
        assert valid
    except InvalidMessage:
        assert not valid


def test_a_message_without_optional_fields_gets_their_defaults() -> None:
    job = ok(body())
    assert (job.tags, job.retries, job.max_age, job.max_attempts) == ((), None, None, 0)
