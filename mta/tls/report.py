"""TLS-RPT (RFC 8460) as values: sessions counted per day, recipient domain and policy,
successes and failures with their result type, and the report document of RFC 8460 §4.
No I/O: `mta.tls.service` writes the documents.

Only mail held to a published policy is counted (MTA-STS `sts`; DANE `tlsa`, one policy
per MX host, its TLSA records): those are the domains whose operators asked for TLS that
cannot be stripped, and whose reports say whether it worked.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from mta.tls.policy import Policy

# Failure texts (the connector's, Python's ssl module's) to RFC 8460 §4.3 result types.
_RESULT_TYPES = (
    ("does not offer STARTTLS", "starttls-not-supported"),
    ("mismatch", "certificate-host-mismatch"),
    ("expired", "certificate-expired"),
    ("self-signed", "certificate-not-trusted"),
    ("unable to get local issuer", "certificate-not-trusted"),
    ("TLSA lookup", "dnssec-invalid"),  # no valid answer from the resolver
    ("TLSA", "tlsa-invalid"),  # none of the records matched
)


def result_type(text: str) -> str:
    """The RFC 8460 result type of a TLS failure described by ``text``."""
    for needle, kind in _RESULT_TYPES:
        if needle.lower() in text.lower():
            return kind
    return "validation-failure"


def day_of(wall: float) -> str:
    return datetime.datetime.fromtimestamp(wall, datetime.timezone.utc).strftime("%Y-%m-%d")


@dataclass
class PolicyCounts:
    policy: dict  # the report's `policy` object
    successes: int = 0
    failures: dict[tuple[str, str | None, str | None], int] = field(default_factory=dict)


def sts_policy(domain: str, policy: Policy) -> dict:
    """The `policy` object of an MTA-STS policy (RFC 8460 §4.4)."""
    lines = ["version: STSv1", f"mode: {policy.mode}"] + [f"mx: {mx}" for mx in policy.mx]
    lines.append(f"max_age: {policy.max_age}")
    return {"policy-type": "sts", "policy-string": lines, "policy-domain": domain, "mx-host": list(policy.mx)}


def tlsa_policy(domain: str, host: str, records: list[str]) -> dict:
    """The `policy` object of an MX host's TLSA records (RFC 8460 §4.4)."""
    return {"policy-type": "tlsa", "policy-string": records, "policy-domain": domain, "mx-host": [host]}


class DayReports:
    """Sessions of one UTC day per recipient domain and policy."""

    def __init__(self, day: str):
        self.day = day
        self.domains: dict[str, dict[str, PolicyCounts]] = {}

    def count(self, domain: str, policy: dict, failure: str | None, mx: str | None, ip: str | None) -> None:
        policies = self.domains.setdefault(domain, {})
        key = repr(sorted(policy.items()))
        counts = policies.get(key)
        if counts is None:
            counts = policies[key] = PolicyCounts(policy)
        if failure is None:
            counts.successes += 1
        else:
            detail = (failure, mx, ip)
            counts.failures[detail] = counts.failures.get(detail, 0) + 1

    def document(self, domain: str, organization: str, sending_ip: str | None = None) -> dict:
        """The RFC 8460 §4 report of ``domain`` for the day."""
        policies = []
        for counts in self.domains.get(domain, {}).values():
            details = []
            for (kind, mx, ip), n in sorted(counts.failures.items(), key=lambda i: (i[0][0], i[0][1] or "", i[0][2] or "")):
                detail = {"result-type": kind, "failed-session-count": n}
                if sending_ip:
                    detail["sending-mta-ip"] = sending_ip
                if mx:
                    detail["receiving-mx-hostname"] = mx
                if ip:
                    detail["receiving-ip"] = ip
                details.append(detail)
            policies.append({"policy": counts.policy,
                             "summary": {"total-successful-session-count": counts.successes,
                                         "total-failure-session-count": sum(counts.failures.values())},
                             "failure-details": details})
        return {"organization-name": organization,
                "date-range": {"start-datetime": f"{self.day}T00:00:00Z", "end-datetime": f"{self.day}T23:59:59Z"},
                "contact-info": f"postmaster@{organization}",
                "report-id": f"{self.day}_{domain}@{organization}",
                "policies": policies}

    @classmethod
    def merged(cls, day: str, domain: str, document: dict) -> "DayReports":
        """The counts of a report written before (a restart goes on counting the day)."""
        reports = cls(day)
        for entry in document.get("policies", []):
            policy = entry["policy"]
            reports.count(domain, policy, None, None, None)
            counts = reports.domains[domain][repr(sorted(policy.items()))]
            counts.successes = int(entry["summary"]["total-successful-session-count"])
            for detail in entry.get("failure-details", []):
                key = (detail["result-type"], detail.get("receiving-mx-hostname"), detail.get("receiving-ip"))
                counts.failures[key] = int(detail["failed-session-count"])
        return reports
