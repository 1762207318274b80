"""The parts of SMTP submission that need no network: reading DATA, passwords, the failure
budgets, sender domains."""

import asyncio

import pytest

from mta.submission import passwords
from mta.submission.lockout import Lockout
from mta.submission.policy import allowed
from mta.submission.server import read_data
from mta.submission.sources import client_address


def _read(wire: bytes, limit: int = 10_000, after: bytes = b"") -> tuple[bytes, bool, bytes]:
    async def go():
        reader = asyncio.StreamReader(limit=1001)
        reader.feed_data(wire + after)
        reader.feed_eof()
        content, too_big = await read_data(reader, limit)
        return content, too_big, await reader.read()

    return asyncio.run(go())


def test_data_ends_only_at_crlf_dot_crlf_and_is_unstuffed():
    content, too_big, rest = _read(b"Subject: x\r\n\r\n..leading dot\r\nbare\n.\nstays\r.\rtoo\r\n.\r\n",
                                   after=b"MAIL FROM:<next@shop.test>\r\n")
    assert not too_big
    assert content == b"Subject: x\r\n\r\n.leading dot\r\nbare\n.\nstays\r.\rtoo\r\n"
    assert rest == b"MAIL FROM:<next@shop.test>\r\n", "pipelined commands after the dot stay unread"


def test_an_empty_message_and_a_dot_first_line():
    assert _read(b".\r\n")[:2] == (b"", False)
    assert _read(b"..x\r\n.\r\n")[0] == b".x\r\n"


def test_lines_longer_than_1000_octets_are_taken():
    line = b"<p>" + b"x" * 5000 + b"</p>\r\n"
    assert _read(line + b".\r\n")[0] == line


def test_over_the_limit_is_read_to_the_end_and_refused():
    content, too_big, rest = _read(b"x" * 70 + b"\r\n" + (b"y" * 70 + b"\r\n") * 100 + b".\r\n", limit=1000,
                                   after=b"QUIT\r\n")
    assert (content, too_big) == (b"", True)
    assert rest == b"QUIT\r\n"


def test_password_hashes_check_and_refuse():
    text = passwords.hash_password("s3cret", ln=10)
    assert text.startswith("$scrypt$ln=10,r=8,p=1$")
    assert passwords.check_hash(b"s3cret", text)
    assert not passwords.check_hash(b"s3cret ", text)
    assert passwords.hash_password("s3cret", ln=10) != text, "salted"


@pytest.mark.parametrize("text", ["", "s3cret", "$scrypt$ln=9,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43,
                                  "$scrypt$ln=15,r=8,p=1$AAAA$" + "A" * 43, "$2b$12$abcdefghijklmnopqrstuv"])
def test_bad_hashes_say_why(text):
    with pytest.raises(ValueError):
        passwords.parse_hash(text)


def test_an_address_is_refused_after_its_budget_and_others_are_not():
    now = [0.0]
    lock = Lockout(lambda: now[0], address_budget=3, user_budget=5, window=60)
    for _ in range(3):
        assert lock.refused("192.0.2.1", "webshop") is None
        lock.failed("192.0.2.1", "webshop")
    assert lock.refused("192.0.2.1", "webshop") == "address"
    assert lock.refused("192.0.2.2", "webshop") is None
    now[0] = 61
    assert lock.refused("192.0.2.1", "webshop") is None, "failures age out"


def test_a_guessed_user_name_is_refused_only_to_addresses_that_failed():
    now = [0.0]
    lock = Lockout(lambda: now[0], address_budget=3, user_budget=5, window=60)
    for i in range(5):
        lock.failed(f"198.51.100.{i}", "webshop")
    assert lock.refused("198.51.100.0", "webshop") == "user"
    assert lock.refused("198.51.100.9", "webshop") is None, "the application's own address never failed"


def test_a_login_that_passes_is_no_failure():
    lock = Lockout(lambda: 0.0, address_budget=2, user_budget=5, window=60)
    for _ in range(10):
        lock.failed("192.0.2.1", "webshop")
        lock.passed("192.0.2.1", "webshop")
    assert lock.refused("192.0.2.1", "webshop") is None


def test_sender_domains_and_wildcards():
    assert allowed("shop.test", ("shop.test",))
    assert not allowed("eshop.test", ("shop.test",))
    assert allowed("mail.shop.test", ("*.shop.test",))
    assert not allowed("shop.test.evil", ("*.shop.test",))


def test_client_addresses_as_allowlists_see_them():
    assert str(client_address("::ffff:192.0.2.7")) == "192.0.2.7"
    assert str(client_address("fe80::1%eth0")) == "fe80::1"
    assert client_address("not an address") is None
