"""The policy server's answer as RFC 8461 §3.3 wants it: a 200 with text/plain, no
redirect followed, at most 64 KiB (by Content-Length, by chunks or by reading)."""

import asyncio

import pytest

from mta.tls.fetch import MAX_POLICY, FetchError, _response

POLICY = b"version: STSv1\r\nmode: enforce\r\nmx: mx.example.com\r\nmax_age: 86400\r\n"


def _answer(raw: bytes) -> str:
    async def main():
        reader = asyncio.StreamReader(limit=16 * 1024)
        reader.feed_data(raw)
        reader.feed_eof()
        return await _response(reader, "mta-sts.example.com")
    return asyncio.run(main())


def test_a_plain_answer_by_length_chunks_or_close():
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
    assert _answer(head + b"Content-Length: %d\r\n\r\n" % len(POLICY) + POLICY) == POLICY.decode()
    chunked = head + b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(POLICY) + POLICY + b"\r\n0\r\n\r\n"
    assert _answer(chunked) == POLICY.decode()
    assert _answer(head + b"\r\n" + POLICY) == POLICY.decode()  # no length: read to the end


@pytest.mark.parametrize("raw, reason", [
    (b"HTTP/1.1 301 Moved\r\nLocation: https://elsewhere/\r\n\r\n", "redirect"),
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", "HTTP 404"),
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n" + POLICY, "not text/plain"),
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % (MAX_POLICY + 1), "over"),
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"x" * (MAX_POLICY + 1), "over"),
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
     + (b"8000\r\n" + b"x" * 0x8000 + b"\r\n") * 3, "over"),
    (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP answer"),
])
def test_answers_that_are_refused(raw, reason):
    with pytest.raises(FetchError) as refused:
        _answer(raw)
    assert reason in str(refused.value)
