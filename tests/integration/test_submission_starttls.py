"""STARTTLS on a submission listener (RFC 3207) with a raw client, byte by byte: what was
sent in plain text behind the STARTTLS line is never read as a command inside TLS, and a
handshake that fails ends its connection and frees its place."""

import socket
import ssl

import pytest

from tests.testbed.submit import ENV, client_context, submission_overrides


def _reply(sock) -> bytes:
    """One SMTP reply, every line of it."""
    got = b""
    while True:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError(f"closed after {got!r}")
        got += chunk
        if got.endswith(b"\r\n"):
            last = got[:-2].rsplit(b"\r\n", 1)[-1]
            if last[3:4] != b"-":
                return got


def _to_starttls(port: int, source: str, behind: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    assert _reply(sock).startswith(b"220 ")
    sock.sendall(b"EHLO client.test\r\n")
    assert b"STARTTLS" in _reply(sock)
    sock.sendall(b"STARTTLS\r\n" + behind)  # one write: it arrives with the STARTTLS line
    assert _reply(sock).startswith(b"220 ")
    return sock


@pytest.mark.timeout(60)
def test_commands_sent_in_plain_text_behind_starttls_are_dropped(vhost, mta_config, start_mta, test_ca):
    overrides, ports = submission_overrides(test_ca)
    start_mta(mta_config(**overrides), env=ENV)
    sock = _to_starttls(ports.starttls, "127.0.0.1", behind=b"NOOP\r\n")
    tls = client_context(test_ca).wrap_socket(sock, server_hostname="mta.test")
    tls.sendall(b"EHLO client.test\r\n")
    first = _reply(tls)
    assert first.startswith(b"250-") and b"AUTH" in first, f"the plain NOOP was answered inside TLS: {first!r}"
    tls.sendall(b"QUIT\r\n")
    assert _reply(tls).startswith(b"221")
    tls.close()


@pytest.mark.timeout(90)
def test_a_failed_handshake_ends_the_connection_and_frees_its_place(vhost, mta_config, start_mta, test_ca):
    """More failed handshakes from one address than it may hold connections (50), each
    client keeping its socket open: the listener ends each itself, and still greets."""
    overrides, ports = submission_overrides(test_ca)
    start_mta(mta_config(**overrides), env=ENV)
    held = []
    for _ in range(60):
        sock = _to_starttls(ports.starttls, "127.0.0.9")
        held.append(sock)  # the client's side stays open: only the listener's closing frees the place
        sock.sendall(b"this is no TLS handshake\r\n" * 4)
        sock.settimeout(10)
        try:
            while sock.recv(4096):  # the server's alert, if any, then its end of the connection
                pass
        except ConnectionResetError:
            pass
    sock = socket.create_connection(("127.0.0.1", ports.starttls), timeout=10, source_address=("127.0.0.9", 0))
    assert _reply(sock).startswith(b"220 ")
    sock.close()
    tls = client_context(test_ca).wrap_socket(_to_starttls(ports.starttls, "127.0.0.1"), server_hostname="mta.test")
    tls.sendall(b"EHLO client.test\r\n")
    assert _reply(tls).startswith(b"250-")
    tls.close()
    for sock in held:
        sock.close()
