"""Who may see the console (SPEC §9): anyone on this machine when it listens on loopback
and has no `console.users`; otherwise HTTP Basic with a user and its scrypt hash.

A console bound to anything but loopback without users is refused outright: the page
holds recipients, replies and the pause switch. Without users, the Host header must name
loopback too, so a web page that rebinds its own name to 127.0.0.1 cannot read the console
through the operator's browser.

A password is checked against its hash once (0.1 s of scrypt, in the HTTP thread); after
that the login is remembered by a keyed digest of the password (mta.submission.passwords),
so a page that refreshes every 10 s does not burn a core. An unknown user costs the same
scrypt check as a known one, and names are compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import threading

from mta.submission.passwords import check_hash, digest, hash_password, same

LOOPBACK_NAMES = ("localhost", "localhost.", "ip6-localhost")


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(header: str) -> str:
    """The host part of a Host header (`127.0.0.1:9108`, `[::1]:9108`, `localhost`)."""
    header = header.strip()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Gate:
    def __init__(self, address: str, users) -> None:
        self.loopback = is_loopback(address)
        self.hashes = {u.username: u.password_hash for u in users}
        self._dummy: str | None = None  # an unknown user's check costs the same: made when first needed
        self._passed: dict[str, bytes] = {}
        self._lock = threading.Lock()

    @property
    def refused(self) -> str | None:
        """Why the console cannot be served at all; None: it can."""
        if not self.loopback and not self.hashes:
            return ("the console needs a login (console.users) when metrics.address is not a loopback address; "
                    "it is not served")
        return None

    def admit(self, authorization: str | None, host: str | None) -> str | None:
        """The user name (or "" with no users configured) when the request may see the
        console; None: it may not (401)."""
        if not self.hashes:
            return "" if self.loopback and host is not None and is_loopback(host_of(host)) else None
        credentials = _basic(authorization)
        if credentials is None:
            return None
        user, password = credentials
        known = None
        for name in self.hashes:  # every name compared, in constant time
            if hmac.compare_digest(name.encode(), user.encode()):
                known = name
        with self._lock:
            remembered = self._passed.get(known) if known is not None else None
        mine = digest(password)
        if remembered is not None and same(remembered, mine):
            return known
        ok = check_hash(password, self.hashes[known] if known is not None else self._unknown())
        if not ok or known is None:
            return None
        with self._lock:
            self._passed[known] = mine
        return known


    def _unknown(self) -> str:
        if self._dummy is None:
            self._dummy = hash_password("")  # the default cost, as `mta hash-password` makes them
        return self._dummy


def warning(config) -> str | None:
    """What `mta check` says when the console will refuse to serve (see Gate.refused)."""
    console, metrics = config.console, config.metrics
    if console.enabled and metrics.port and not console.users and not is_loopback(metrics.address):
        return (f"metrics.address {metrics.address} is not loopback and console.users is empty: the console "
                "(/console) will not be served; add users (mta hash-password) or set console.enabled: false")
    return None


def _basic(authorization: str | None) -> tuple[str, bytes] | None:
    if not authorization or not authorization[:6].lower() == "basic ":
        return None
    try:
        raw = base64.b64decode(authorization[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = raw.partition(b":")
    if not colon:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None
