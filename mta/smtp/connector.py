"""Opening an SMTP session: connect (implicit TLS on request), banner, EHLO, STARTTLS per
the TLS policy, AUTH, all within the attempt's deadline; what fails becomes a `Reply`."""

from __future__ import annotations

import asyncio
import socket
import ssl

import aiosmtplib
from aiosmtplib.errors import SMTPConnectResponseError, SMTPException, SMTPHeloError

from mta.clock import SYSTEM, Clock
from mta.smtp.client import Credentials, Reply, SessionFailed, Timeouts, _failed, _text
from mta.smtp.session import Session
from mta.tls.dane import verify
from mta.tls.report import result_type

_ENCODING_DER = 2  # the ssl module's (private) _ssl.ENCODING_DER, for its Certificate objects
# Modes whose certificate must be valid for the MX host (chain and name).
VERIFYING = ("verified", "mta-sts-enforce", "mta-sts-testing")


class _Opening:
    """Where an open is (what its failure names) and the client it holds (what a failure,
    a timeout or a cancellation closes)."""

    __slots__ = ("phase", "client", "tls_failure", "tlsa")

    def __init__(self) -> None:
        self.phase = "connect"
        self.client: aiosmtplib.SMTP | None = None
        self.tls_failure: str | None = None  # an MTA-STS policy in testing mode that this session fails
        self.tlsa = None  # DANE: the host's TLSA state (mta.tls.dane.HostTlsa)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


class Connector:
    """Opens sessions: connect (implicit TLS on request), banner, EHLO, STARTTLS per policy,
    AUTH when credentials are given. Remembers hosts whose STARTTLS failed, so that the next
    opportunistic try goes in plaintext.

    TLS policy: `opportunistic` uses STARTTLS when offered without checking the certificate;
    `required` never sends mail in plaintext (no STARTTLS offered, or a failed handshake,
    fails the session); `verified` also checks the chain (system CAs or `ca_file`) and that
    the certificate names the host; `disabled` never starts TLS. Credentials go out only
    over TLS whose certificate verified for the host (`verified` whatever the policy),
    unless ``auth_verified`` is False (a route's `tls_verify: false`): then any TLS will do.

    MTA-STS (mta.tls.apply makes the rules' `dane`/`mta-sts` concrete): `mta-sts-enforce`
    is `verified` in the policy's name; `mta-sts-testing` tries the same, and a session
    that fails it goes on anyway (no STARTTLS: plaintext; a certificate refused: a new
    connection without checking it), noting the failure for the report. `dane` and
    `mta-sts` left as they are (a smarthost, a domain routed to given hosts) are
    `opportunistic`.

    DANE (RFC 7672): `dane` with the host's secure TLSA state (``tlsa``) requires STARTTLS
    and a certificate chain that matches the usable records (mta.tls.dane.verify; no CA
    store, the MX host's name as SNI); records that are all unusable still require TLS,
    unauthenticated (§2.2); a failed TLSA lookup sends nothing to the host. Without
    ``tlsa`` (no secure records) `dane` is `opportunistic`.
    """

    def __init__(self, helo: str, bind: str | None, clock: Clock = SYSTEM, ca_file: str | None = None):
        self._helo = helo
        self._bind = bind
        self._clock = clock
        self._ca_file = ca_file
        self._tls_broken: dict[str, float] = {}
        self._contexts: dict[tuple[bool, str | None], ssl.SSLContext] = {}

    async def open(self, mx: str, ip: str, port: int, *, tls: str, timeouts: Timeouts,
                   auth: Credentials | None = None, implicit_tls: bool = False,
                   ca_file: str | None = None, auth_verified: bool = True, tlsa=None) -> Session:
        """Connect, read the banner, EHLO, STARTTLS per policy, AUTH; raises SessionFailed."""
        # A password is only for the host a certificate proves: anyone can offer STARTTLS.
        for_auth = auth is not None and auth_verified and tls in ("opportunistic", "required", "dane", "mta-sts")
        if tls == "mta-sts" or (tls == "dane" and tlsa is None):
            tls = "opportunistic"
        elif tls == "dane" and tlsa.failure is not None:
            raise SessionFailed(Reply(None, f"DANE: {tlsa.failure}: nothing goes to {mx} until its TLSA records "
                                            f"can be read (RFC 7672 §2.2)", "tls"))
        try:
            if tls == "mta-sts-testing":
                return await self._testing(mx, ip, port, timeouts, auth, implicit_tls, ca_file or self._ca_file)
            return await self._open(mx, ip, port, "verified" if for_auth and tls != "dane" else tls, timeouts, auth,
                                    implicit_tls, ca_file or self._ca_file, for_auth, tlsa)
        except SessionFailed as exc:
            if auth is not None:  # a server may echo what it was sent: never let a secret through
                reply = exc.reply
                raise SessionFailed(Reply(reply.code, auth.scrub(reply.text), reply.phase)) from None
            raise

    async def _testing(self, mx: str, ip: str, port: int, timeouts: Timeouts, auth: Credentials | None,
                       implicit_tls: bool, ca_file: str | None) -> Session:
        """A session under an MTA-STS policy in testing mode: verified if it can be, else
        as it can be, with the failure noted (RFC 8461 §5: delivered, and reported)."""
        try:
            return await self._open(mx, ip, port, "mta-sts-testing", timeouts, auth, implicit_tls, ca_file, False)
        except SessionFailed as exc:
            if exc.reply.phase != "tls":
                raise
            failure = result_type(exc.reply.text)
        session = await self._open(mx, ip, port, "opportunistic", timeouts, auth, implicit_tls, ca_file, False)
        session.tls_failure = failure
        return session

    async def _open(self, mx: str, ip: str, port: int, tls: str, timeouts: Timeouts,
                    auth: Credentials | None, implicit_tls: bool, ca_file: str | None, for_auth: bool,
                    tlsa=None) -> Session:
        # what the TLS failures say: the policy, or why a route's credentials need verified TLS
        if for_auth:
            policy = (f"the credentials of this route go only over TLS verified for {mx} (tls_verify: false "
                      f"would allow any TLS)")
        elif tls.startswith("mta-sts"):
            policy = f"the recipient domain's MTA-STS policy requires TLS with a certificate valid for {mx}"
        elif tls == "dane":
            policy = f"the DNSSEC-signed TLSA records of {mx} (DANE) require TLS"
        else:
            policy = f"TLS is {tls} for {mx}"
        opening = _Opening()
        opening.tlsa = tlsa
        # One deadline over all the steps: a receiver answering each just inside its own
        # timeout would otherwise stretch the open to several times the attempt's deadline.
        deadline = asyncio.timeout(timeouts.opening)
        try:
            async with deadline:
                used_tls = await self._steps(opening, mx, ip, port, tls, policy, timeouts, auth, implicit_tls, ca_file)
        except SessionFailed:
            opening.close()
            raise
        except SMTPConnectResponseError as exc:
            opening.close()
            raise SessionFailed(Reply(exc.code, _text(exc.message), "connect")) from exc
        except (SMTPException, OSError, asyncio.TimeoutError) as exc:
            opening.close()
            phase = opening.phase
            if deadline.expired():  # cut in the middle of a step: its own reply never came
                raise SessionFailed(Reply(None, f"timed out ({phase}): the attempt's deadline came before the "
                                                f"session was open", phase)) from exc
            refused = _certificate_error(exc)
            if refused is not None:
                raise SessionFailed(Reply(None, f"TLS certificate of {mx} not accepted ({policy}): "
                                                f"{refused.verify_message or refused.reason}", "tls")) from exc
            raise SessionFailed(_failed(exc, phase)) from exc
        except asyncio.CancelledError:  # shutdown: nothing of the open stays connected
            opening.close()
            raise
        client = opening.client
        session = Session(client, mx, ip, timeouts, used_tls, self._clock)
        session.cipher = _cipher_of(client.transport) if used_tls else None
        session.tls_failure = opening.tls_failure
        return session

    async def _steps(self, opening: _Opening, mx: str, ip: str, port: int, tls: str, policy: str, timeouts: Timeouts,
                     auth: Credentials | None, implicit_tls: bool, ca_file: str | None) -> bool:
        """Connect, banner, EHLO, STARTTLS per policy, AUTH, noting each step in ``opening``;
        returns whether TLS is up."""
        if implicit_tls:
            # aiosmtplib names the TLS peer after the address it connects to; a socket of
            # our own lets it name (and verify) the host while connecting to the address.
            sock = await self._connect_socket(ip, port, timeouts.connect)
            opening.client = client = aiosmtplib.SMTP(
                hostname=mx, sock=sock, local_hostname=self._helo, timeout=timeouts.connect,
                use_tls=True, start_tls=False, tls_context=self._context(tls in VERIFYING, ca_file),
            )
        else:
            opening.client = client = aiosmtplib.SMTP(
                hostname=ip, port=port, local_hostname=self._helo,
                source_address=(self._bind, 0) if self._bind else None,
                timeout=timeouts.connect, start_tls=False, use_tls=False, validate_certs=False,
            )
        await client.connect()
        opening.phase = "ehlo"
        try:
            await client.ehlo(timeout=timeouts.ehlo)
        except SMTPHeloError as exc:
            if exc.code == 421 or exc.code < 500:
                raise
            await client.helo(timeout=timeouts.ehlo)
        used_tls = implicit_tls
        if implicit_tls:
            pass  # TLS since the first byte
        elif tls != "disabled" and client.supports_extension("starttls"):
            if tls == "opportunistic" and self._tls_broken.get(ip, -1.0) > self._clock.now():
                pass
            else:
                opening.phase = "tls"
                await self._starttls(client, mx, ip, tls, timeouts, ca_file)
                if opening.tlsa is not None:
                    self._dane(client, mx, opening.tlsa, policy)
                used_tls = True
                opening.phase = "ehlo"
                await client.ehlo(timeout=timeouts.ehlo)
        elif tls in ("required", "verified", "mta-sts-enforce", "dane"):
            raise SessionFailed(Reply(None, f"{policy} but the server does not offer STARTTLS", "tls"))
        elif tls == "mta-sts-testing":
            opening.tls_failure = "starttls-not-supported"
        if auth is not None:
            opening.phase = "auth"
            await self._authenticate(client, mx, auth, used_tls, timeouts)
        return used_tls

    async def _connect_socket(self, ip: str, port: int, timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if self._bind:
                sock.bind((self._bind, 0))
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (ip, port)), timeout)
        except BaseException:
            sock.close()
            raise
        return sock

    def _context(self, verify: bool, ca_file: str | None) -> ssl.SSLContext:
        """One context per (verification, CA file): building one reads the CA store."""
        key = (verify, ca_file if verify else None)
        context = self._contexts.get(key)
        if context is None:
            context = ssl.create_default_context(cafile=ca_file if verify else None)
            if not verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._contexts[key] = context
        return context

    async def _starttls(self, client: aiosmtplib.SMTP, mx: str, ip: str, tls: str, timeouts: Timeouts,
                        ca_file: str | None) -> None:
        verify = tls in VERIFYING
        try:
            await client.starttls(tls_context=self._context(verify, ca_file),
                                  server_hostname=mx if verify or tls == "dane" else None, timeout=timeouts.starttls)
        except (SMTPException, OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            if tls == "opportunistic":
                # Next time this host gets plaintext: a broken TLS stack must not block mail.
                self._tls_broken[ip] = self._clock.now() + 3600
            raise

    def _dane(self, client: aiosmtplib.SMTP, mx: str, tlsa, policy: str) -> None:
        """The session's certificate chain against the host's usable TLSA records (none
        usable: TLS is all they require); raises SessionFailed when it does not match."""
        records = tlsa.usable
        if not records:
            return
        problem = verify(records, _peer_chain(client.transport), mx, self._clock.wall())
        if problem is not None:
            raise SessionFailed(Reply(None, f"DANE: {problem} ({policy})", "tls"))

    async def _authenticate(self, client: aiosmtplib.SMTP, mx: str, auth: Credentials, used_tls: bool,
                            timeouts: Timeouts) -> None:
        if not used_tls:
            raise SessionFailed(Reply(None, f"{mx} did not start TLS: credentials are never sent in plaintext", "auth"))
        methods = client.server_auth_methods
        if "plain" in methods:
            await client.auth_plain(auth.username, auth.password, timeout=timeouts.ehlo)
        elif "login" in methods:
            await client.auth_login(auth.username, auth.password, timeout=timeouts.ehlo)
        else:
            raise SessionFailed(Reply(None, f"{mx} offers no AUTH PLAIN or LOGIN "
                                            f"(offered: {' '.join(methods) or 'none'})", "auth"))


def _certificate_error(exc: BaseException | None) -> ssl.SSLCertVerificationError | None:
    """The certificate check that failed, however deep aiosmtplib wrapped it."""
    for _ in range(5):
        if exc is None or isinstance(exc, ssl.SSLCertVerificationError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _peer_chain(transport) -> list[bytes]:
    """The certificates the server sent (DER, its own first). Python 3.11 has no public
    call for the unverified chain (3.13's `get_unverified_chain`): the private one of the
    SSL object, else the server's certificate alone (enough for DANE-EE)."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return []
    chain = getattr(ssl_object, "get_unverified_chain", None) or getattr(
        getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    if chain is not None:
        certificates = chain() or []
        return [c if isinstance(c, bytes) else c.public_bytes(_ENCODING_DER) for c in certificates]
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def _cipher_of(transport) -> str | None:
    """`TLSv1.3 TLS_AES_256_GCM_SHA384`: what results record about the session's TLS."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    return f"{ssl_object.version()} {cipher[0]}" if cipher else ssl_object.version()

