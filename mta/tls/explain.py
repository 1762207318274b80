"""What `mta check --explain DOMAIN` says about TLS: the rules' mode and, for the modes
that honour published policies, the domain's MTA-STS policy and DANE records as they are
now (fetched for the explanation, as the running MTA would; its own copies may be older)."""

from __future__ import annotations

from mta.config import Config
from mta.routing.mx import MxAnswer
from mta.tls.apply import HONOURING, described
from mta.tls.fetch import FetchError, Fetcher
from mta.tls.service import resolver_of
from mta.tls.tlsa import DaneStates, secure_resolver


async def tls_lines(config: Config, domain: str, mode: str, answer: MxAnswer | None, static: bool) -> list[str]:
    """The lines of the explanation; ``answer`` None: the MX hosts are not known."""
    if mode not in HONOURING or static or answer is None:
        why = "the rules route it to given hosts" if static else "no MX lookup" if answer is None else ""
        shown = described(mode, None) if mode not in HONOURING else f"tls: {mode} ({why}: published policies not looked up)"
        return [f"  TLS: {shown}"]
    settings = config.mta_sts
    fetcher = Fetcher(resolver_of(config), timeout=settings.timeout, port=settings.port, ca_file=settings.ca_file)
    lines, sts = [], None
    try:
        txt = await fetcher.fetch_txt(domain)
        if txt.policy_id is not None:
            sts = await fetcher.fetch_policy(domain)
            lines.append(f"  MTA-STS: policy id {txt.policy_id}: {sts.describe()}")
        else:
            lines.append(f"  MTA-STS: no _mta-sts.{domain} TXT record")
    except FetchError as exc:
        lines.append(f"  MTA-STS: {exc} (mail goes as if there were no policy, unless one is kept from before)")
    dane = None
    if mode == "dane" and config.dns.dnssec:
        states = DaneStates(secure_resolver(resolver_of(config)), lambda: 0.0, timeout=config.dns.timeout)
        dane, _ = await states.lookup(domain)
        for host, state in sorted(dane.items()):
            shown = state.failure or "; ".join(map(str, state.records)) + ("" if state.usable else " (none usable)")
            lines.append(f"  DANE: {host}: {shown}")
        if not dane:
            lines.append("  DANE: no secure TLSA records for its MX hosts (or its MX answer is not DNSSEC-signed)")
    elif mode == "dane":
        lines.append("  DANE: not looked up (dns.dnssec is false: the resolver is not trusted to validate)")
    if sts is not None and sts.mode == "enforce" and not dane:
        matching = [h.name for h in answer.hosts if sts.allows(h.name)]
        lines.append(f"  MX hosts the policy allows: {', '.join(matching) or 'none (its mail is deferred)'}")
    return lines + [f"  TLS in force: {described(mode, sts, dane)}"]
