"""Source passwords: scrypt hashes (`mta hash-password`), and checking a login without
leaking time or text.

A hash is `$scrypt$ln=15,r=8,p=1$<salt>$<key>` (base64 without padding), the form passlib
and the PHC string format use: N = 2**ln, 32 MiB and about 0.1 s per check at the
defaults, which is the point. Checks run in a thread (hashlib releases the GIL), never on
the event loop. A password given in clear (an environment variable or a file) is compared
through a keyed digest of both sides with `hmac.compare_digest`, so neither its length nor
its first differing octet shows in the time taken.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re

DEFAULT_LN, DEFAULT_R, DEFAULT_P = 15, 8, 1
_FORMAT = re.compile(r"\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)")
_KEY = os.urandom(32)  # for digests of clear-text passwords: fixed length, this process only


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, ln: int = DEFAULT_LN, r: int = DEFAULT_R, p: int = DEFAULT_P) -> str:
    salt = os.urandom(16)
    key = _scrypt(password.encode("utf-8"), salt, ln, r, p, 32)
    return f"$scrypt$ln={ln},r={r},p={p}${_b64(salt)}${_b64(key)}"


def parse_hash(text: str) -> tuple[int, int, int, bytes, bytes]:
    """(ln, r, p, salt, key); ValueError saying what is wrong."""
    m = _FORMAT.fullmatch(text.strip())
    if not m:
        raise ValueError("not an scrypt hash as `mta hash-password` prints it ($scrypt$ln=..,r=..,p=..$salt$key)")
    ln, r, p = int(m[1]), int(m[2]), int(m[3])
    if not (10 <= ln <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
        raise ValueError(f"scrypt cost out of range (ln 10..20, r 1..32, p 1..16): ln={ln}, r={r}, p={p}")
    salt, key = _unb64(m[4]), _unb64(m[5])
    if len(salt) < 8 or len(key) < 16:
        raise ValueError("scrypt hash with a salt under 8 or a key under 16 octets")
    return ln, r, p, salt, key


def _scrypt(password: bytes, salt: bytes, ln: int, r: int, p: int, length: int) -> bytes:
    n = 1 << ln
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=256 * n * r + 1024 * 1024, dklen=length)


def check_hash(password: bytes, text: str) -> bool:
    """Does `password` match the scrypt hash `text`? CPU-heavy: call it in a thread."""
    ln, r, p, salt, key = parse_hash(text)
    return hmac.compare_digest(_scrypt(password, salt, ln, r, p, len(key)), key)


def digest(password: bytes) -> bytes:
    """A keyed digest of a password: what clear-text passwords are compared by, and what a
    login that passed is remembered by (never the password itself)."""
    return hmac.new(_KEY, password, hashlib.sha256).digest()


def same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
