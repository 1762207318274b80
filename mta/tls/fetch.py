"""Getting a domain's MTA-STS policy (RFC 8461 §3): its `_mta-sts` TXT record through the
MTA's resolver, then `https://mta-sts.<domain>/.well-known/mta-sts.txt`.

The HTTPS fetch follows the RFC's limits: the certificate must be valid for
`mta-sts.<domain>` (system CAs, or `mta_sts.ca_file` for a private CA), only a 200 with
`text/plain` counts, redirects are not followed (§3.3), a policy longer than 64 KiB is
refused unread (§3.3 suggests that limit), and the whole fetch ends within `timeout`. The
policy host's address comes from the MTA's own resolver, like the MX hosts'. Failures are
`FetchError`s whose text says what went wrong; nothing else escapes.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

import dns.exception
import dns.resolver

from mta.tls.policy import Policy, PolicyError, parse_policy, parse_txt

MAX_POLICY = 64 * 1024  # octets of a policy file (RFC 8461 §3.3)
MAX_HEADER = 16 * 1024  # octets of the status line and header fields together
PATH = "/.well-known/mta-sts.txt"


class FetchError(Exception):
    """The TXT record or the policy could not be had; the text says why, ``kind`` how
    TLS-RPT names it (RFC 8460 §4.3: `sts-policy-fetch-error`, `sts-policy-invalid`,
    `sts-webpki-invalid`)."""

    def __init__(self, text: str, kind: str = "sts-policy-fetch-error"):
        super().__init__(text)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Fetched:
    policy_id: str | None  # None: the domain publishes no MTA-STS TXT record
    policy: Policy | None  # None with an id: not fetched (`fetch_txt` only)
    ttl: float  # seconds the TXT answer may be kept


class Fetcher:
    """Fetches with ``resolver`` (dnspython's async resolver, the MTA's nameservers);
    ``port``/``ca_file``: the policy server's port (443; another only in tests) and CA."""

    def __init__(self, resolver, *, timeout: float = 10.0, port: int = 443, ca_file: str | None = None):
        self._resolver = resolver
        self._timeout = timeout
        self._port = port
        self._context = ssl.create_default_context(cafile=ca_file)

    async def fetch_txt(self, domain: str) -> Fetched:
        """The policy id of ``domain``'s TXT record (None: it has none) and its TTL."""
        name = f"_mta-sts.{domain}"
        try:
            answer = await self._resolver.resolve(name, "TXT", lifetime=self._timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return Fetched(None, None, 0.0)
        except dns.exception.DNSException as exc:
            raise FetchError(f"DNS failure looking up TXT of {name}: {exc.__class__.__name__}") from None
        texts = [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
        try:
            return Fetched(parse_txt(texts), None, float(answer.rrset.ttl))
        except PolicyError as exc:
            raise FetchError(f"{name}: {exc}") from None

    async def fetch_policy(self, domain: str) -> Policy:
        """The policy file of ``domain``, parsed; raises FetchError."""
        host = f"mta-sts.{domain}"
        try:
            async with asyncio.timeout(self._timeout):
                text = await self._get(host)
        except TimeoutError:
            raise FetchError(f"https://{host}{PATH}: no complete answer within {self._timeout:g}s") from None
        except ssl.SSLCertVerificationError as exc:
            raise FetchError(f"https://{host}{PATH}: certificate not accepted: "
                             f"{exc.verify_message or exc.reason}", "sts-webpki-invalid") from None
        except (OSError, ssl.SSLError, EOFError) as exc:
            raise FetchError(f"https://{host}{PATH}: {exc.__class__.__name__}: {exc}") from None
        try:
            return parse_policy(text)
        except PolicyError as exc:
            raise FetchError(f"https://{host}{PATH}: {exc}", "sts-policy-invalid") from None

    async def _address(self, host: str) -> str:
        for kind in ("A", "AAAA"):
            try:
                answer = await self._resolver.resolve(host, kind, lifetime=self._timeout)
            except dns.resolver.NoAnswer:
                continue
            except dns.exception.DNSException as exc:
                raise FetchError(f"DNS failure looking up {kind} of {host}: {exc.__class__.__name__}") from None
            for record in answer:
                return record.address
        raise FetchError(f"{host} has no address")

    async def _get(self, host: str) -> str:
        address = await self._address(host)
        reader, writer = await asyncio.open_connection(address, self._port, ssl=self._context,
                                                       server_hostname=host, limit=MAX_HEADER)
        try:
            writer.write(f"GET {PATH} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
                         f"Accept: text/plain\r\nUser-Agent: mta\r\n\r\n".encode("ascii"))
            await writer.drain()
            return await _response(reader, host)
        finally:
            writer.close()


async def _response(reader: asyncio.StreamReader, host: str) -> str:
    """The body of a 200 text/plain answer, at most MAX_POLICY octets; FetchError else."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise FetchError(f"https://{host}{PATH}: header over {MAX_HEADER} octets") from None
    except asyncio.IncompleteReadError:
        raise FetchError(f"https://{host}{PATH}: connection closed before the header ended") from None
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or not status[1].isdigit():
        raise FetchError(f"https://{host}{PATH}: not an HTTP answer")
    code = int(status[1])
    fields = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    if 300 <= code < 400:
        raise FetchError(f"https://{host}{PATH}: HTTP {code} redirect (RFC 8461 §3.3: not followed)")
    if code != 200:
        raise FetchError(f"https://{host}{PATH}: HTTP {code}")
    media = fields.get("content-type", "").split(";")[0].strip().lower()
    if media != "text/plain":
        raise FetchError(f"https://{host}{PATH}: Content-Type {media or 'missing'}, not text/plain")
    if fields.get("transfer-encoding", "").lower() == "chunked":
        body = await _chunked(reader, host)
    else:
        length = fields.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_POLICY):
            raise FetchError(f"https://{host}{PATH}: policy of {length} octets, over {MAX_POLICY}")
        body = await reader.read(MAX_POLICY + 1) if length is None else await reader.readexactly(int(length))
        while length is None and len(body) <= MAX_POLICY:
            more = await reader.read(MAX_POLICY + 1 - len(body))
            if not more:
                break
            body += more
    if len(body) > MAX_POLICY:
        raise FetchError(f"https://{host}{PATH}: policy over {MAX_POLICY} octets")
    return body.decode("utf-8", "replace")


async def _chunked(reader: asyncio.StreamReader, host: str) -> bytes:
    body = b""
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size_text = size_line.split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise FetchError(f"https://{host}{PATH}: bad chunk size") from None
        if size == 0:
            return body
        if len(body) + size > MAX_POLICY:
            raise FetchError(f"https://{host}{PATH}: policy over {MAX_POLICY} octets")
        body += await reader.readexactly(size)
        await reader.readexactly(2)
