"""mta.dkim.signature against dkimpy: the same canonical forms, and signatures that dkimpy's verifier accepts."""

import time

import dkim
import pytest
from dkim.canonicalization import Relaxed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mta.dkim.signature import (
    KeyProblem,
    generate,
    header_list,
    load_key,
    relaxed_body,
    relaxed_header,
    sender_domain,
    sign_message,
    split_message,
    unstuff,
)
from mta.intake.message import canonical_data

RSA = generate("sender.test", "r1")
ED = generate("sender.test", "e1", "ed25519-sha256")
RECORDS = {f"{k.dns_name()}.".encode(): k.dns_txt().encode() for k in (RSA, ED)}


def dnsfunc(name, timeout=5):
    return RECORDS.get(name)


def verified(signed: bytes) -> list[bool]:
    checker = dkim.DKIM(signed)
    count = sum(1 for name, _ in checker.headers if name.lower() == b"dkim-signature")
    return [_verify_one(checker, i) for i in range(count)]


def _verify_one(checker, index) -> bool:
    try:
        return checker.verify(index, dnsfunc=dnsfunc)
    except dkim.DKIMException:  # dkimpy raises for a body hash mismatch, returns False for a bad b=
        return False


def now() -> int:
    return int(time.time())


MESSAGE = (b"From: Shop <shop@sender.test>\r\nTo: a@x.test\r\nSubject:  hello \t world \r\n\tfolded\r\n"
           b"Date: Mon, 23 Nov 2026 12:00:00 +0000\r\nMessage-ID: <m1@sender.test>\r\nX-Unsigned: 1\r\n\r\n"
           b"body  line \t\r\n\r\n.dot\r\nmore\r\n\r\n\r\n")


# ---- canonical forms (RFC 6376 §3.4.2, §3.4.4) equal dkimpy's

_wsp_text = st.text(alphabet=st.sampled_from(list("ab  \t\tc.é:;")), max_size=30)
_lines = st.lists(_wsp_text, max_size=8)


@given(_lines)
def test_relaxed_body_is_dkimpys(lines):
    body = "".join(line + "\r\n" for line in lines).encode()
    assert relaxed_body(body) == Relaxed.canonicalize_body(body)


@given(st.sampled_from([b"Subject", b"FROM", b"x-y"]), _wsp_text, _wsp_text)
def test_relaxed_header_is_dkimpys(name, first, folded):
    # dkimpy strips all ASCII whitespace at the ends; RFC 6376 says WSP, and values here hold only WSP
    value = b" " + first.encode() + (b"\r\n\t" + folded.encode() if folded else b"")
    ((cname, cvalue),) = Relaxed.canonicalize_headers([(name, value)])
    assert relaxed_header(name + b":" + value) == cname + b":" + cvalue


def test_empty_body_hashes_as_nothing():
    assert relaxed_body(b"") == b"" and relaxed_body(b"\r\n\r\n") == b"" and relaxed_body(b" \t\r\n") == b""


@given(st.binary(max_size=200))
def test_unstuff_undoes_intake_dot_stuffing(raw):
    data = canonical_data(raw)
    plain = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    assert unstuff(data) == (plain if plain.endswith(b"\r\n") else plain + b"\r\n")


# ---- signatures


def test_rsa_ed25519_and_dual_verify():
    for keys in ([RSA], [ED], [RSA, ED]):
        header = sign_message(MESSAGE, keys, now())
        assert header.count(b"DKIM-Signature:") == len(keys)
        assert verified(header + MESSAGE) == [True] * len(keys)
        assert all(len(line) <= 78 for line in header.split(b"\r\n"))


def test_from_is_signed_and_oversigned():
    fields, _ = split_message(MESSAGE)
    names = header_list(fields)
    assert names.count(b"from") == 2 and b"x-unsigned" not in names
    assert b"reply-to" in names  # absent, so adding one later breaks the signature
    signed = sign_message(MESSAGE, [RSA], now()) + MESSAGE
    assert verified(signed.replace(b"X-Unsigned: 1\r\n", b"X-Unsigned: 2\r\nX-Added: 1\r\n")) == [True]
    tampered = {
        "body": signed.replace(b"more\r\n", b"mor3\r\n"),
        "second From": signed.replace(b"To: a@x.test", b"From: evil@attacker.test\r\nTo: a@x.test"),
        "added Reply-To": signed.replace(b"To: a@x.test", b"Reply-To: evil@attacker.test\r\nTo: a@x.test"),
        "subject": signed.replace(b"folded", b"f0lded"),
    }
    for what, message in tampered.items():
        assert verified(message) == [False], what


def test_relaxed_survives_whitespace_changes_in_transit():
    signed = sign_message(MESSAGE, [ED], now()) + MESSAGE
    rewrapped = signed.replace(b"Subject:  hello \t world", b"subject: hello world").replace(b"body  line \t", b"body line")
    assert verified(rewrapped) == [True]


_header_names = st.sampled_from(["From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To", "X-Tag",
                                 "Content-Type", "List-Unsubscribe", "Received", "MIME-Version"])
_value = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF, blacklist_characters="\x7f"),
                 max_size=40)


@st.composite
def messages(draw):
    fields = [b"From: <x@sender.test>"]
    for name, value, fold in draw(st.lists(st.tuples(_header_names, _value, st.booleans()), max_size=8)):
        value = value.encode()
        fields.append(name.encode() + b": " + (value[:10] + b"\r\n\t" + value[10:] if fold and value[10:] else value))
    fields = draw(st.permutations(fields))
    body = draw(st.lists(st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), max_size=10))
    return b"\r\n".join(fields) + b"\r\n\r\n" + b"".join(line + b"\r\n" for line in body)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_any_message_verifies_with_dkimpy(message):
    assert verified(sign_message(message, [RSA, ED], now()) + message) == [True, True]


# ---- the domain that signs


@pytest.mark.parametrize("head, domain", [
    (b"From: Shop <shop@Sender.Test>", "sender.test"),
    (b"from: shop@sender.test", "sender.test"),
    (b"From: \"a@b.test\" <shop@sender.test>", "sender.test"),
    (b"From: Shop\r\n <shop@sender.test>", "sender.test"),
    (b"Subject: x\r\nFROM: (comment) shop@sender.test (x)", "sender.test"),
    (b"From: =?utf-8?q?Gr=C3=BC=C3=9Fe?= <a@b\xc3\xbccher.test>", "xn--bcher-kva.test"),
    (b"From: <news@fa\xc3\x9f.de>", "xn--fa-hia.de"),  # IDNA 2008 as intake maps it, not IDNA 2003's fass.de
    (b"From: <news@xn--fa-hia.de>", "xn--fa-hia.de"),
    (b"Subject: no from here", None),
    (b"From: undisclosed", None),
    (b"Subject: x\r\nX-From: a@elsewhere.test", None),
])
def test_sender_domain(head, domain):
    assert sender_domain(head + b"\r\n\r\nFrom: body@not.this\r\n") == domain


# ---- key files


def test_key_problems_name_the_file(tmp_path):
    short = tmp_path / "short.pem"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    pem = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    short.write_bytes(pem)
    cases = {
        str(tmp_path / "absent.pem"): "cannot read",
        str(short): "1024 bits is too short",
        str(tmp_path): "cannot read",
    }
    for path, reason in cases.items():
        with pytest.raises(KeyProblem) as info:
            load_key("a.test", "s", path, "rsa-sha256")
        assert str(info.value).startswith(f"{path}: ") and reason in str(info.value)
        assert pem.splitlines()[1].decode() not in str(info.value)


def test_dkimpy_ed25519_seed_files_load(tmp_path):
    import base64
    from cryptography.hazmat.primitives import serialization
    seed = ED.private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
    path = tmp_path / "seed.key"
    path.write_bytes(base64.b64encode(seed) + b"\n")
    path.chmod(0o600)
    key, warnings = load_key("sender.test", "e1", str(path), "ed25519-sha256")
    assert warnings == [] and key.dns_txt() == ED.dns_txt()
