"""What `sign_message` writes, byte for byte, against the plain implementation it replaced.

The signing code caches the signature field's folded layout per key, header list and
width of t= and canonicalises each message's header fields once for all its keys; none
of that may change a byte of what is signed or written. RSA PKCS#1 v1.5 and Ed25519
signatures are deterministic, so the whole field compares equal.
"""

import base64
import hashlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mta.dkim import signature
from mta.dkim.signature import generate, header_list, relaxed_body, relaxed_header, sign_message, split_message

from .test_dkim import MESSAGE, messages

KEYS = [generate("sender.test", "r1"), generate("sender.test", "e1", "ed25519-sha256"),
        generate("xn--bcher-kva.example-with-a-long-name.test", "selector-of-some-length-2026-12", "ed25519-sha256")]


# ---- the implementation as it was (relaxed/relaxed, one key at a time, folded on every call)


def _field_name(field):
    return field.split(b":", 1)[0].rstrip(b" \t").lower()


def _select_fields(fields, names):
    by_name = {}
    for field in fields:
        by_name.setdefault(_field_name(field), []).append(field)
    chosen = []
    for name in names:
        instances = by_name.get(name)
        if instances:
            chosen.append(instances.pop())
    return chosen


_fold_tags = signature._fold_tags  # unchanged by the cached layout: the old code called it too


def _reference_header(key, fields, body_hash, now, names):
    tags = [b"v=1", b"a=" + key.algorithm.encode(), b"c=relaxed/relaxed", b"d=" + key.domain.encode(),
            b"s=" + key.selector.encode(), b"t=%d" % now, b"h=" + b":".join(names),
            b"bh=" + base64.b64encode(body_hash), b"b="]
    unsigned = b"DKIM-Signature: " + _fold_tags(tags, len(b"DKIM-Signature: "))
    h = hashlib.sha256()
    for field in _select_fields(fields, names):
        h.update(relaxed_header(field))
    h.update(relaxed_header(unsigned)[:-2])
    if key.algorithm == "ed25519-sha256":
        sig = key.private.sign(h.digest())
    else:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding
        from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
        sig = key.private.sign(h.digest(), padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    b64 = base64.b64encode(sig)
    return unsigned + b"\r\n\t" + b"\r\n\t".join(b64[i:i + 70] for i in range(0, len(b64), 70)) + b"\r\n"


def reference(message, keys, now):
    fields, body = split_message(message)
    body_hash = hashlib.sha256(relaxed_body(body)).digest()
    names = header_list(fields)
    return b"".join(_reference_header(key, fields, body_hash, now, names) for key in keys)


# ----


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages(), st.sampled_from([0, 7, 99, 1_764_000_000, 10_000_000_000, 1_764_000_001]))
def test_sign_message_writes_what_the_plain_implementation_wrote(message, now):
    assert sign_message(message, KEYS, now) == reference(message, KEYS, now)


def test_the_same_layout_again_from_the_cache_and_each_key_alone():
    for now in (1_764_000_000, 1_764_000_001, 5):
        for keys in (KEYS, KEYS[:1], KEYS[2:], KEYS[::-1]):
            assert sign_message(MESSAGE, keys, now) == reference(MESSAGE, keys, now)


def test_many_header_fields_fold_h_as_before():
    names = [b"To", b"Cc", b"Subject", b"List-Unsubscribe", b"List-Unsubscribe-Post", b"Resent-Message-ID",
             b"Content-Description", b"In-Reply-To", b"References", b"List-Archive"] * 3
    message = b"From: <x@sender.test>\r\n" + b"".join(n + b": v\r\n" for n in names) + b"\r\nbody\r\n"
    assert sign_message(message, KEYS, 1_764_000_000) == reference(message, KEYS, 1_764_000_000)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=1200), max_size=12), st.booleans(),
       st.sampled_from([b"", b"\r", b"\n", b"\r\r"]))
def test_long_line_check_is_the_longest_line(lengths, final_crlf, stray):
    message = b"\r\n".join(b"y" * n + stray for n in lengths) + (b"\r\n" if final_crlf else b"")
    assert signature.has_long_line(message) is (signature.longest_line(message) > signature.MAX_LINE)
