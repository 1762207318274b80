"""TLS-RPT reports as mail (RFC 8460 §3, §5.3), as values: the `_smtp._tls` TXT record's
`mailto:` addresses, and the message that carries one day's report of one domain. No
I/O: `mta.tls.commands` reads the files, looks the records up and publishes.

§5.3: a `multipart/report; report-type="tlsrpt"` message, `TLS-Report-Domain` and
`TLS-Report-Submitter` header fields, a subject naming both and the report id, a short
text part, and the report gzipped as `application/tlsrpt+gzip` named
`SUBMITTER!POLICY-DOMAIN!BEGIN!END.json.gz` (Unix seconds). The RFC wants the message
DKIM-signed: a `dkim:` key for the sender's domain does that, as for any other mail.
"""

from __future__ import annotations

import datetime
import gzip
import json
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid


def parse_rua(records: list[str]) -> list[str]:
    """The `mailto:` addresses of the `_smtp._tls` TXT records (each one record, its
    strings joined); none unless exactly one record starts with `v=TLSRPTv1`."""
    reporting = [r.strip() for r in records if r.strip().startswith("v=TLSRPTv1")]
    if len(reporting) != 1:
        return []
    fields = {}
    for part in reporting[0].split(";"):
        key, sep, value = part.strip().partition("=")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    addresses = []
    for uri in fields.get("rua", "").split(","):
        uri = uri.strip()
        if uri.lower().startswith("mailto:"):
            address = uri[7:].split("?")[0].split("!")[0]
            if "@" in address:
                addresses.append(address)
    return addresses


def _seconds(stamp: str) -> int:
    return int(datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())


def report_message(document: dict, domain: str, sender: str, recipient: str, now: float) -> str:
    """The MIME text (CRLF) mailing ``document`` (the day's report of ``domain``)."""
    submitter = document["organization-name"]
    dates = document["date-range"]
    name = f"{submitter}!{domain}!{_seconds(dates['start-datetime'])}!{_seconds(dates['end-datetime'])}.json.gz"
    message = EmailMessage(policy=SMTP)
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = f"Report Domain: {domain} Submitter: {submitter} Report-ID: <{document['report-id']}>"
    message["Date"] = format_datetime(datetime.datetime.fromtimestamp(now, datetime.timezone.utc))
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    message["TLS-Report-Domain"] = domain
    message["TLS-Report-Submitter"] = submitter
    message.set_content(f"This is an aggregate TLS report (RFC 8460) from {submitter} for {domain}, "
                        f"{dates['start-datetime']} to {dates['end-datetime']}.\r\n")
    report = gzip.compress(json.dumps(document).encode(), mtime=0)
    message.add_attachment(report, maintype="application", subtype="tlsrpt+gzip", filename=name)
    message.set_type("multipart/report")  # (multipart/mixed until now; the boundary stays)
    message.set_param("report-type", "tlsrpt")
    return message.as_string()
