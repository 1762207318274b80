"""PROXY protocol (v1 and v2) on a listener behind a load balancer: allowlists see the client
behind it, and a PROXY header is believed only from `proxy_from`."""

import smtplib
import socket
import struct

import pytest

from tests.testbed.amqp import collect_results
from tests.testbed.checks import run_id
from tests.testbed.submit import ENV, message, queued_id, submit, submission_overrides
from tests.testbed.util import free_port

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def _v1(src: str) -> bytes:
    return f"PROXY TCP4 {src} 127.0.0.1 40000 25\r\n".encode()


def _v2(src: str) -> bytes:
    addresses = socket.inet_aton(src) + socket.inet_aton("127.0.0.1") + struct.pack(">HH", 40000, 25)
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack(">H", len(addresses)) + addresses


def _through(port: int, header: bytes, bind: str = "127.0.0.1") -> smtplib.SMTP:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(bind, 0))
    sock.sendall(header)
    client = smtplib.SMTP()
    client.sock = sock
    code, text = client.getreply()
    if code != 220:
        raise smtplib.SMTPConnectError(code, text)
    client.ehlo("balanced.test")
    return client


@pytest.mark.timeout(120)
def test_proxy_protocol_gives_allowlists_the_real_client(vhost, sinks, mta_config, start_mta, test_ca):
    overrides, _ = submission_overrides(test_ca)
    port = free_port()
    overrides["listeners"].append({"address": f"127.0.0.1:{port}", "tls": "none", "proxy_protocol": True,
                                   "proxy_from": ["127.0.0.1/32"]})
    start_mta(mta_config(**overrides), env=ENV)
    run = run_id()
    sent = []
    for version, header in (("v1", _v1("127.0.0.3")), ("v2", _v2("127.0.0.3"))):
        with _through(port, header) as client:  # the printer's address, behind the balancer
            rcpt = f"proxy-{version}-{run}@ok1.test"
            code, text = submit(client, "printer@office.test", [rcpt], message(f"px-{version}-{run}", to=rcpt))
            assert code == 250, (version, text)
            sent.append(queued_id(text))
    with _through(port, _v1("127.0.0.4")) as client:  # someone else behind the balancer: not the printer
        assert client.mail("printer@office.test")[0] == 530
    for header, bind in ((b"EHLO direct.test\r\n", "127.0.0.1"), (_v1("127.0.0.3"), "127.0.0.9")):
        with pytest.raises((smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, ConnectionError)):
            _through(port, header, bind)  # no header, or a header from outside proxy_from: closed unheard
    results = collect_results(vhost, sent, timeout=60, settle=1.0)
    for sid in sent:
        assert [r["status"] for r in results[sid]] == ["delivered"], results[sid]
        assert results[sid][0]["source"] == "printer"
