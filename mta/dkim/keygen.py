"""`mta dkim-keygen DOMAIN SELECTOR`: a new private key file and the DNS TXT record to publish."""

from __future__ import annotations

import os
import sys

from mta.dkim.signature import KeyProblem, generate


def txt_strings(text: str, size: int = 255) -> list[str]:
    """A TXT value as character-strings of at most 255 octets (RFC 1035 §3.3); DKIM joins them."""
    return [text[i:i + size] for i in range(0, len(text), size)]


def keygen(domain: str, selector: str, algorithm: str, bits: int, key_file: str | None) -> int:
    try:
        key = generate(domain, selector, algorithm, bits)
    except KeyProblem as exc:
        print(f"dkim-keygen: {exc}", file=sys.stderr)
        return 2
    path = key_file or f"{key.domain}.{selector}.pem"
    try:
        # O_EXCL: an existing key (perhaps the published one) is never replaced by accident
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        print(f"dkim-keygen: cannot create {path}: {exc.strerror}", file=sys.stderr)
        return 1
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.pem())
    strings = " ".join(f'"{part}"' for part in txt_strings(key.dns_txt()))
    print(f"wrote {path} (mode 0600); publish this TXT record, then add the key to the rules file:\n")
    print(f"{key.dns_name()}. IN TXT ( {strings} )\n")
    print(f"dkim:\n  - domain: {key.domain}\n    selector: {selector}\n    key_file: {os.path.abspath(path)}"
          + (f"\n    algorithm: {algorithm}" if algorithm != "rsa-sha256" else ""))
    return 0
