"""SMTP submission in tests (SPEC §7): a rules file's `listeners:` and `sources:` on free
ports with certificates of the session's test CA, and clients for them (smtplib, swaks)."""

from __future__ import annotations

import re
import smtplib
import ssl
import subprocess
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .util import free_port

PASSWORD = "correct horse battery staple"
ENV = {"WEBSHOP_SMTP_PASSWORD": PASSWORD}
QUEUED = re.compile(r"queued as ([0-9a-f]{32})")
TRACE = re.compile(rb"\AReceived: from [^\r\n]*\r\n(?:\t[^\r\n]*\r\n)+")


@dataclass
class Ports:
    starttls: int
    implicit: int
    plain: int


def submission_overrides(ca, extra_sources: Optional[Dict[str, Any]] = None,
                         **source_changes: Any) -> Tuple[Dict[str, Any], Ports]:
    """Config overrides with three listeners (STARTTLS, implicit TLS, and a plain one on
    loopback for `auth: none`) and two sources: `webshop` (password, from 127.0.0.1 only,
    sending for shop.test) and `printer` (no credentials, known as 127.0.0.3)."""
    cert, key = ca.issue(names=["mta.test"], ips=["127.0.0.1"])
    ports = Ports(free_port(), free_port(), free_port())
    webshop = {"users": [{"username": "webshop", "password_env": "WEBSHOP_SMTP_PASSWORD"}],
               "allow_ips": ["127.0.0.1/32"], "sender_domains": ["shop.test"], "lane": "single",
               "tags": ["webshop"]}
    webshop.update(source_changes)
    return {
        "listeners": [
            {"address": f"127.0.0.1:{ports.starttls}", "tls": "starttls", "cert_file": cert, "key_file": key},
            {"address": f"127.0.0.1:{ports.implicit}", "tls": "implicit", "cert_file": cert, "key_file": key},
            {"address": f"127.0.0.1:{ports.plain}", "tls": "none"},
        ],
        "sources": {"webshop": webshop, "printer": {"auth": "none", "allow_ips": ["127.0.0.3/32"], "lane": "bulk"},
                    **(extra_sources or {})},
    }, ports


def client_context(ca) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca.ca_file)


def starttls_client(ca, port: int, source_address: Optional[str] = None, login: bool = True,
                    password: str = PASSWORD, user: str = "webshop") -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=30,
                          source_address=(source_address, 0) if source_address else None)
    client.ehlo("client.test")
    client.starttls(context=client_context(ca))
    client.ehlo("client.test")
    if login:
        client.login(user, password)
    return client


def submit(client: smtplib.SMTP, sender: str, recipients: List[str], data: bytes) -> Tuple[int, str]:
    """MAIL, RCPT..., DATA by hand: the reply to the dot, (code, text)."""
    code, text = client.mail(sender)
    assert code == 250, (code, text)
    for rcpt in recipients:
        code, text = client.rcpt(rcpt)
        assert code == 250, (rcpt, code, text)
    code, text = client.data(data)
    return code, text.decode()


def queued_id(text: str) -> str:
    m = QUEUED.search(text)
    assert m, text
    return m[1]


def message(msg_id: str, sender: str = "orders@shop.test", to: str = "buyer@ok1.test", body: str = "") -> bytes:
    return (f"From: Shop <{sender}>\r\nTo: <{to}>\r\nSubject: order {msg_id}\r\n"
            f"Message-ID: <{msg_id}@test>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n"
            f"Thank you for your order {msg_id}.\r\n{body}.a line that starts with a dot\r\n").encode()


def without_trace(data: bytes) -> bytes:
    """What a sink got, less our Received: header (asserted to be there, once, first)."""
    m = TRACE.match(data)
    assert m, data[:300]
    return data[m.end():]


def swaks(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["swaks", *args], capture_output=True,
                          text=True, timeout=timeout)
