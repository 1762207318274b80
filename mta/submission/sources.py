"""Who may submit: the configured sources with their passwords read at start, found by a
login or (for `auth: none`) by the client's address alone."""

from __future__ import annotations

import asyncio
import ipaddress
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mta.config import ConfigError, Source
from mta.submission import passwords
from shaper.limiter import Gcra

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_CHECKS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="password-check")


def client_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client's address as allowlists see it: an IPv4-mapped IPv6 address is IPv4."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class Known:
    """A source as the listeners use it: its networks parsed, its rate limiter."""

    __slots__ = ("source", "networks", "rate")

    def __init__(self, source: Source):
        self.source = source
        self.networks: tuple[IPNetwork, ...] | None = (
            None if source.allow_ips is None else tuple(ipaddress.ip_network(n) for n in source.allow_ips))
        rate = source.max_message_rate
        # "600/min": 600 may come in any minute, all at once if need be, then at the pace
        self.rate = None if rate is None else Gcra(rate, burst=max(1, int(rate.count)))

    @property
    def name(self) -> str:
        return self.source.name

    def allows(self, address) -> bool:
        if self.networks is None:
            return True
        return address is not None and any(address in net for net in self.networks)


class Directory:
    """Sources by login and by address. Reading a password that is not there (a missing
    variable or file) is a ConfigError at start, like a route's."""

    def __init__(self, sources: tuple[Source, ...], base: str | None = None):
        self.sources = {s.name: Known(s) for s in sources}
        self._logins: dict[str, tuple[Known, bytes | None, str | None]] = {}  # name -> (source, digest, hash)
        self._passed: dict[str, bytes] = {}  # user name -> digest of the password a hash check accepted
        problems = []
        for known in self.sources.values():
            for i, user in enumerate(known.source.users):
                where = f"sources.{known.name}.users[{i}]"
                try:
                    secret = _secret(user, base)
                except ConfigError as exc:
                    problems += [f"{where}: {p}" for p in exc.problems]
                    continue
                self._logins[user.username] = (known, None if secret is None else passwords.digest(secret),
                                               user.password_hash)
        if problems:
            raise ConfigError(problems)
        # an unknown user name costs the same scrypt as a wrong password: no telling them apart
        self._decoy = passwords.hash_password(os.urandom(16).hex()) if any(
            hashed for _, _, hashed in self._logins.values()) else None
        # auth: none sources, most specific network first
        self._by_network = sorted(((net, known) for known in self.sources.values()
                                   if known.source.auth == "none" for net in known.networks or ()),
                                  key=lambda item: -item[0].prefixlen)

    def by_address(self, address) -> Known | None:
        """The `auth: none` source this client address names, if any."""
        if address is None:
            return None
        for net, known in self._by_network:
            if address.version == net.version and address in net:
                return known
        return None

    def source_of(self, username: str) -> Known | None:
        entry = self._logins.get(username)
        return None if entry is None else entry[0]

    async def check(self, username: str, password: bytes) -> Known | None:
        """The source whose user this is, if the password is right. Hash checks run in a
        thread; one that passed is remembered by a keyed digest, so a client logging in on
        every connection costs one scrypt, not one per connection."""
        entry = self._logins.get(username)
        given = passwords.digest(password)
        if entry is None:
            if self._decoy is not None:
                await self._hash(password, self._decoy)
            return None
        known, digest, hashed = entry
        if digest is not None:
            if passwords.same(given, digest):
                return known
            if self._decoy is not None:  # a wrong password takes as long as for a hashed user
                await self._hash(password, self._decoy)
            return None
        remembered = self._passed.get(username)
        if remembered is not None and passwords.same(given, remembered):
            return known
        if await self._hash(password, hashed):
            self._passed[username] = given
            return known
        return None

    async def _hash(self, password: bytes, hashed: str) -> bool:
        """scrypt in the listeners' own two threads: a flood of logins waits its turn there
        and never takes the threads the rest of the engine uses."""
        return await asyncio.get_running_loop().run_in_executor(_CHECKS, passwords.check_hash, password, hashed)


def _secret(user, base: str | None) -> bytes | None:
    """The clear-text password of a user (None: it has a hash)."""
    if user.password_env is not None:
        value = os.environ.get(user.password_env)
        if not value:
            raise ConfigError([f"password_env: the environment variable {user.password_env} is not set"])
        return value.encode("utf-8")
    if user.password_file is not None:
        path = Path(user.password_file)
        if base is not None and not path.is_absolute():
            path = Path(base).parent / path
        try:
            value = path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"password_file: cannot read {path}: {exc}"]) from None
        if not value:
            raise ConfigError([f"password_file: {path} is empty"])
        return value.encode("utf-8")
    return None
