"""DKIM (RFC 6376, RFC 8463 for Ed25519): keys, canonicalisation and the signature itself.

Pure functions of bytes, no I/O beyond reading key files: `mta.dkim.signer` runs `sign_message`
in worker processes, tests call it directly and check the result with dkimpy's verifier.

Why not `dkim.sign()`: dkimpy does the RSA private-key operation in pure Python (about
8 ms a signature); `cryptography` (OpenSSL) does it in about 0.2 ms. Canonicalisation here
is relaxed/relaxed only, written from RFC 6376 §3.4.2 and §3.4.4 with bytes methods and
regular expressions so that a 20 MB body costs C loops, not Python ones.

The message given to `sign_message` is the canonical DATA payload without dot-stuffing:
CRLF line ends only (intake guarantees it), so what is signed is what the receiver sees.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from typing import Sequence

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from mta.intake.idn import ascii_domain
from mta.intake.longlines import has_long_line as _has_long_line

MIN_RSA_BITS = 2048
MAX_LINE = 998  # octets between CRLFs (RFC 5322 §2.1.1, RFC 5321 §4.5.3.1.6)

# RFC 6376 §5.4.1's list, plus RFC 8058's one-click unsubscribe header, which must be signed.
SIGNED = frozenset((
    b"from", b"sender", b"reply-to", b"subject", b"date", b"message-id", b"to", b"cc",
    b"mime-version", b"content-type", b"content-transfer-encoding", b"content-id",
    b"content-description", b"resent-date", b"resent-from", b"resent-sender", b"resent-to",
    b"resent-cc", b"resent-message-id", b"in-reply-to", b"references", b"list-id",
    b"list-help", b"list-unsubscribe", b"list-unsubscribe-post", b"list-subscribe",
    b"list-post", b"list-owner", b"list-archive",
))
# Named once more in h= than they occur (RFC 6376 §8.15): a copy added in transit, or one
# that was absent, breaks the signature instead of being shown to the reader as signed.
# (All of them are in SIGNED: `_canonical_fields` relies on it.)
OVERSIGNED = (b"from", b"reply-to", b"sender", b"subject", b"date", b"to", b"cc", b"message-id",
              b"mime-version", b"content-type", b"content-transfer-encoding")

_WSP_RUN = re.compile(rb"[ \t]+")
_WSP_EOL = re.compile(rb"[ \t]+\r\n")
_FROM_ANGLE = re.compile(rb"<[^<>]*@([^<>@\s]+)>")
_FROM_BARE = re.compile(rb"@([^\s<>,;()\"@]+)")
_PKCS1 = padding.PKCS1v15()
_SHA256 = Prehashed(hashes.SHA256())


class KeyProblem(ValueError):
    """A key file that cannot be used; the text names the file, never the key material."""


@dataclass(frozen=True)
class SigningKey:
    domain: str  # lower case, A-label form
    selector: str
    algorithm: str  # "rsa-sha256" or "ed25519-sha256"
    private: object  # rsa.RSAPrivateKey or ed25519.Ed25519PrivateKey

    def pem(self) -> bytes:
        return self.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())

    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def dns_txt(self) -> str:
        """The TXT record to publish (RFC 6376 §3.6.1; RFC 8463 §4 for k=ed25519)."""
        return public_txt(self.private)


def public_txt(private) -> str:
    public = private.public_key()
    if isinstance(private, ed25519.Ed25519PrivateKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def normalise_domain(domain: str) -> str:
    """The A-label form intake gives a sender's domain (IDNA 2008, UTS #46: `faß.de` is
    `xn--fa-hia.de`), so a key, the From header and the envelope compare equal. A name
    that is no valid IDN stays as written: it matches no key (the rules file refuses one)."""
    return ascii_domain(domain) or domain.strip().rstrip(".").lower()


# ---------------------------------------------------------------- keys


def parse_private_key(data: bytes, path: str):
    """PEM (PKCS#8 or PKCS#1), or dkimpy's base64 Ed25519 seed; never echoes the content."""
    if b"-----BEGIN" in data:
        try:
            return serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise KeyProblem(f"{path}: the key is encrypted; DKIM keys must be stored without a passphrase") from None
        except (ValueError, Exception):  # cryptography says what it could not parse; we say which file
            raise KeyProblem(f"{path}: not a readable PEM private key") from None
    try:
        seed = base64.b64decode(data.strip(), validate=True)
    except ValueError:
        seed = b""
    if len(seed) == 32:
        return ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    raise KeyProblem(f"{path}: not a PEM private key (nor a base64 Ed25519 seed)")


def load_key(domain: str, selector: str, path: str, algorithm: str) -> tuple[SigningKey, list[str]]:
    """The key and any warnings; raises KeyProblem naming the file."""
    try:
        with open(path, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            data = fh.read(1 << 20)
    except OSError as exc:
        raise KeyProblem(f"{path}: cannot read: {exc.strerror}") from None
    private = parse_private_key(data, path)
    if isinstance(private, rsa.RSAPrivateKey):
        if private.key_size < MIN_RSA_BITS:
            raise KeyProblem(f"{path}: RSA key of {private.key_size} bits is too short ({MIN_RSA_BITS} at least)")
        kind = "rsa-sha256"
    elif isinstance(private, ed25519.Ed25519PrivateKey):
        kind = "ed25519-sha256"
    else:
        raise KeyProblem(f"{path}: {type(private).__name__.removeprefix('_')} keys are not used by DKIM (RSA or Ed25519)")
    if kind != algorithm:
        raise KeyProblem(f"{path}: holds a key for {kind} but algorithm is {algorithm}")
    warnings = []
    if mode & (stat.S_IRWXO):
        warnings.append(f"{path}: private key is accessible to other users (mode {stat.S_IMODE(mode):04o}); chmod 600 it")
    return SigningKey(normalise_domain(domain), selector, algorithm, private), warnings


def generate(domain: str, selector: str, algorithm: str = "rsa-sha256", bits: int = 2048) -> SigningKey:
    if algorithm == "ed25519-sha256":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        if bits < MIN_RSA_BITS:
            raise KeyProblem(f"RSA keys of fewer than {MIN_RSA_BITS} bits are not accepted")
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return SigningKey(normalise_domain(domain), selector, algorithm, private)


# ---------------------------------------------------------------- message


def unstuff(data: bytes) -> bytes:
    """The message from canonical DATA bytes (`mta.intake.message.canonical_data` doubled leading dots)."""
    if data.startswith(b".."):
        data = data[1:]
    return data.replace(b"\r\n..", b"\r\n.")


def split_message(message: bytes) -> tuple[list[bytes], bytes]:
    """Header fields (each with its folded continuation lines, no final CRLF) and the body."""
    if message.startswith(b"\r\n"):
        return [], message[2:]
    end = message.find(b"\r\n\r\n")
    if end < 0:
        head, body = message[:-2] if message.endswith(b"\r\n") else message, b""
    else:
        head, body = message[:end], message[end + 4:]
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    return fields, body


def field_name(field: bytes) -> bytes:
    return field.partition(b":")[0].rstrip(b" \t").lower()


def relaxed_header(field: bytes) -> bytes:
    """RFC 6376 §3.4.2: lower-case name, unfold, runs of WSP to one SP, no WSP around the colon or at the end."""
    name, _, value = field.partition(b":")
    if b"\r\n" in value:
        value = value.replace(b"\r\n", b"")
    if b"\t" in value or b"  " in value:  # a lone SP is already canonical: no regular expression for it
        value = _WSP_RUN.sub(b" ", value)
    return name.rstrip(b" \t").lower() + b":" + value.strip(b" \t") + b"\r\n"


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 §3.4.4 (with erratum 1384: an empty body is hashed as nothing)."""
    if b" \r\n" in body or b"\t\r\n" in body:
        body = _WSP_EOL.sub(b"\r\n", body)
    if b"\t" in body or b"  " in body:
        body = _WSP_RUN.sub(b" ", body)
    body = body.rstrip(b"\r\n")  # no bare CR or LF here: only whole empty lines go
    return body + b"\r\n" if body else b""


def sender_domain(message: bytes) -> str | None:
    """The domain of the (first) From header's address, or None."""
    end = message.find(b"\r\n\r\n")
    head = b"\r\n" + (message if end < 0 else message[:end])
    at = head.lower().find(b"\r\nfrom:")
    if at < 0:
        return None
    stop = at + 7
    while True:  # the field ends at the first line that is not a continuation
        stop = head.find(b"\r\n", stop)
        if stop < 0 or head[stop + 2:stop + 3] not in (b" ", b"\t"):
            break
        stop += 2
    value = head[at + 7:stop if stop >= 0 else len(head)].replace(b"\r\n", b"")
    found = _FROM_ANGLE.search(value) or _FROM_BARE.search(value)
    if found is None:
        return None
    return normalise_domain(found.group(1).decode("utf-8", "replace").rstrip(">"))


def header_list(fields: Sequence[bytes]) -> list[bytes]:
    return list(_signed_names(list(map(field_name, fields))))


def _signed_names(names: Sequence[bytes]) -> tuple[bytes, ...]:
    return tuple(n for n in names if n in SIGNED) + OVERSIGNED


def _canonical_fields(fields: Sequence[bytes], names: Sequence[bytes], signed: Sequence[bytes]) -> bytes:
    """The fields `signed` names, relaxed, in order (RFC 6376 §5.4.2: each name takes the next
    instance from the bottom; none left signs nothing): the same for every key of a message."""
    present = [name for name in names if name in SIGNED]
    if len(set(present)) == len(present):
        # each name once: h= lists them in header order and the oversigned names that follow
        # find no instance left, so the fields are the signed ones as they stand
        return b"".join([relaxed_header(f) for f, name in zip(fields, names) if name in SIGNED])
    by_name: dict[bytes, list[bytes]] = {}
    for field, name in zip(fields, names):
        by_name.setdefault(name, []).append(field)
    chosen = []
    for name in signed:
        instances = by_name.get(name)
        if instances:
            chosen.append(relaxed_header(instances.pop()))
    return b"".join(chosen)


def _fold_tags(tags: Sequence[bytes], first: int) -> bytes:
    """`tag; tag; ...` folded before a tag (or inside h= at a colon) to keep lines short."""
    out, width = [], first
    for i, tag in enumerate(tags):
        piece = tag + (b";" if i < len(tags) - 1 else b"")
        for j, part in enumerate(piece.split(b":") if tag.startswith(b"h=") else [piece]):
            if j:
                part = b":" + part
            if width + len(part) + 1 > 76:
                out.append(b"\r\n\t")
                width = 8
            elif out:
                out.append(b" " if j == 0 else b"")
                width += 1 if j == 0 else 0
            out.append(part)
            width += len(part)
    return b"".join(out)


def _fold_b64(value: bytes) -> bytes:
    return b"\r\n\t".join([value[i:i + 70] for i in range(0, len(value), 70)])


_T = b"\0"  # stand-in octets for the t= and bh= values while a layout is folded
_BH = b"\1" * 44  # base64 of a SHA-256 digest: always 44 octets


@functools.lru_cache(maxsize=1024)
def _layout(domain: str, selector: str, algorithm: str, names: tuple[bytes, ...], t_width: int):
    """The signature field up to `b=`, as written and as hashed (relaxed, no CRLF), each cut
    in three where the t= and bh= values go. Where it folds depends on the widths of those
    values, not on them: bulk mail (one key, the same header fields, 10-digit times) folds
    once instead of once a message."""
    t = _T * t_width
    tags = [b"v=1", b"a=" + algorithm.encode(), b"c=relaxed/relaxed", b"d=" + domain.encode(),
            b"s=" + selector.encode(), b"t=" + t, b"h=" + b":".join(names), b"bh=" + _BH, b"b="]
    written = b"DKIM-Signature: " + _fold_tags(tags, len(b"DKIM-Signature: "))
    return _cut(written, t), _cut(relaxed_header(written)[:-2], t)


def _cut(field: bytes, t: bytes) -> tuple[bytes, bytes, bytes]:
    head, _, rest = field.partition(t)
    middle, _, tail = rest.partition(_BH)
    return head, middle, tail


def _signature_field(key: SigningKey, canonical: bytes, names: tuple[bytes, ...], t: bytes, bh: bytes) -> bytes:
    """One `DKIM-Signature:` field, CRLF-terminated, ready to prepend."""
    (w1, w2, w3), (h1, h2, h3) = _layout(key.domain, key.selector, key.algorithm, names, len(t))
    digest = hashlib.sha256(b"".join((canonical, h1, t, h2, bh, h3))).digest()
    if key.algorithm == "ed25519-sha256":
        signature = key.private.sign(digest)  # RFC 8463: Ed25519 over the SHA-256 hash
    else:
        signature = key.private.sign(digest, _PKCS1, _SHA256)
    b64 = binascii.b2a_base64(signature, newline=False)
    return b"".join((w1, t, w2, bh, w3, b"\r\n\t", _fold_b64(b64), b"\r\n"))


def sign_message(message: bytes, keys: Sequence[SigningKey], now: int) -> bytes:
    """The `DKIM-Signature` fields (one per key) to prepend to `message` (CRLF-only, not dot-stuffed)."""
    fields, body = split_message(message)
    bh = binascii.b2a_base64(hashlib.sha256(relaxed_body(body)).digest(), newline=False)
    names = list(map(field_name, fields))
    signed = _signed_names(names)
    canonical = _canonical_fields(fields, names, signed)
    t = b"%d" % now
    return b"".join([_signature_field(key, canonical, signed, t, bh) for key in keys])


# ---------------------------------------------------------------- worker processes (mta.dkim.worker)
# Keys arrive once, when a worker starts, over its private socket; batches carry only the
# DATA bytes and key indexes.

_worker_keys: list[SigningKey] = []


def init_keys(exported: Sequence[tuple[str, str, str, bytes]]) -> None:
    _worker_keys[:] = [SigningKey(d, s, a, serialization.load_pem_private_key(pem, None))
                       for d, s, a, pem in exported]


def longest_line(message: bytes) -> int:
    return max(map(len, message.split(b"\r\n")))


def has_long_line(message: bytes) -> bool:
    """Whether `longest_line(message) > MAX_LINE` (CRLF line ends), without splitting."""
    return _has_long_line(message, b"\r\n")


def sign_batch(items: Sequence[tuple[bytes, tuple[int, ...]]], now: int) -> list[bytes | tuple[bool, str]]:
    """For each (canonical DATA bytes, key indexes): the fields to prepend, or (permanent?, why not)."""
    out: list[bytes | tuple[bool, str]] = []
    for data, indexes in items:
        try:
            message = unstuff(data)
            if has_long_line(message):
                longest = longest_line(message)
                # RFC 5321 §4.5.3.1.6: a relay may wrap such a line, and the signature breaks with it
                out.append((True, f"5.6.0 a line of {longest} octets exceeds the {MAX_LINE} SMTP allows; "
                                  "it would not arrive as signed (local decision)"))
                continue
            out.append(sign_message(message, [_worker_keys[i] for i in indexes], now))
        except Exception as exc:  # one message's problem must not fail its batch
            out.append((False, f"4.3.0 DKIM signing failed: {type(exc).__name__}: {exc} (local)"))
    return out
