"""TLS that cannot be stripped: MTA-STS (RFC 8461) and DANE (RFC 7672) policies of the
recipient domains, which TLS a destination's sessions must have, and TLS-RPT reports
(RFC 8460) of how that went. The pure parts (`policy`, `dane`, `report`) do no I/O."""
