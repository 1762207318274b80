"""Which TLS a recipient domain's mail gets: the rules' `tls` mode, made concrete by the
policies the domain publishes. No I/O: the policies come in as values.

`tls: dane` (the default) and `tls: mta-sts` honour what the domain publishes: DANE
(`dane` only, with TLSA records of its MX hosts that DNSSEC made secure: `mta.tls.dane`),
else an MTA-STS policy, else nothing and the mail goes `opportunistic`. The other modes
(`opportunistic`, `required`, `verified`, `disabled`) are the operator's word and ignore
published policies.

The concrete modes the connector knows besides the rules' own: `mta-sts-enforce` (only
MX hosts the policy names, TLS with a certificate valid for the MX host, else the attempt
is deferred), `mta-sts-testing` (delivered whatever the TLS, failures reported), `dane`
(the certificate must match the host's TLSA records). A destination whose mail needs a
policy of its own gets a key of its own (the policy's MX patterns appended), so that
domains sharing MX hosts but not a policy never share a session.
"""

from __future__ import annotations

import dataclasses
import re

import msgspec

from mta.routing.mx import DnsFailure, MxAnswer
from mta.routing.rules import Resolved
from mta.tls.policy import Policy

HONOURING = ("dane", "mta-sts")  # rules' modes that follow what the domain publishes
_TLS_PART = re.compile(r" (?:mta-sts(?:-testing)?\[[^\]]*\]|dane)$")


def base_key(key: str) -> str:
    """The destination key a TLS policy's own destination comes from (`mx:HOSTS
    mta-sts[...]` -> `mx:HOSTS`): what an operator's pause or resume names."""
    return _TLS_PART.sub("", key)


def with_tls(resolved: Resolved, tls: str, key: str | None = None) -> Resolved:
    policy = msgspec.structs.replace(resolved.policy, tls=tls)
    return Resolved(key or resolved.key, policy, resolved.why, resolved.group, resolved.group_policy)


def concrete(resolved: Resolved, answer: MxAnswer, domain: str, sts: Policy | None,
             dane_hosts: dict | None = None) -> tuple[Resolved, MxAnswer] | DnsFailure:
    """The destination and hosts for ``domain``'s mail under ``sts`` (its MTA-STS policy
    in force, or None) and ``dane_hosts`` ({MX host: its secure TLSA state}, when its MX
    answer is secure); or the failure that defers it (an enforced policy that none of its
    MX hosts matches)."""
    mode = resolved.policy.tls
    if mode not in HONOURING:
        return resolved, answer
    if mode == "dane" and dane_hosts:
        # RFC 7672 §2.2: DANE for the hosts with secure TLSA records (each host carries its
        # own), the others opportunistic; DANE beats MTA-STS.
        hosts = tuple(dataclasses.replace(h, tlsa=dane_hosts.get(h.name)) for h in answer.hosts)
        return with_tls(resolved, "dane", f"{resolved.key} dane"), MxAnswer(hosts, answer.implicit)
    if sts is None or sts.mode == "none":
        return with_tls(resolved, "opportunistic"), answer
    patterns = ",".join(sts.mx)
    if sts.mode == "testing":
        return with_tls(resolved, "mta-sts-testing", f"{resolved.key} mta-sts-testing[{patterns}]"), answer
    hosts = tuple(h for h in answer.hosts if sts.allows(h.name))
    if not hosts:
        names = ", ".join(h.name for h in answer.hosts)
        return DnsFailure(False, "4.7.5", f"MTA-STS policy of {domain} (enforce) allows only MX hosts matching "
                                          f"{', '.join(sts.mx)}; none of its MX hosts ({names}) matches", "tls")
    return with_tls(resolved, "mta-sts-enforce", f"{resolved.key} mta-sts[{patterns}]"), MxAnswer(hosts, answer.implicit)


def in_force(resolved: Resolved) -> str:
    """The TLS policy an attempt of ``resolved`` is held to, as results and metrics name
    it: a rules' `dane`/`mta-sts` that nothing made concrete (no policy published, a
    smarthost, hosts the rules give) is `opportunistic`, as the connector treats it."""
    mode = resolved.policy.tls
    if mode == "mta-sts" or (mode == "dane" and not resolved.key.endswith(" dane")):
        return "opportunistic"
    return mode


def described(mode: str, sts: Policy | None, dane_hosts: dict | None = None) -> str:
    """What `mta check --explain` says about the TLS in force."""
    if mode not in HONOURING:
        return f"tls: {mode} (set by the rules: published MTA-STS and DANE policies are not consulted)"
    if mode == "dane" and dane_hosts:
        return f"DANE (TLSA records of {', '.join(sorted(dane_hosts))}): the certificate must match them"
    if sts is not None and sts.mode != "none":
        return f"MTA-STS policy: {sts.describe()}"
    return "opportunistic (no MTA-STS policy" + (" or DANE TLSA records" if mode == "dane" else "") + " in force)"
