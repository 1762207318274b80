"""A session's replies are credited to the commands they answer: a receiver whose replies do
not fit its commands (250 to DATA, 354 to MAIL, a reply nobody asked for) ends the session
with a protocol failure, never a delivery, and gets no message content.

The receiver is a scripted peer behind a fake transport: it reads what the session writes,
answers each command by its script, and records what it was sent."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from mta.smtp.client import Reply, SessionFailed, Timeouts
from mta.smtp.session import Session

SENDER, RECIPIENT = "a@sender.test", "b@receiver.test"
CONTENT = b"Subject: hi\r\n\r\nthe body\r\n"
NEXT = b"Subject: second\r\n\r\nanother body\r\n"
GOOD = {"MAIL": b"250 2.1.0 Ok\r\n", "RCPT": b"250 2.1.5 Ok\r\n", "DATA": b"354 End data with <CR><LF>.<CR><LF>\r\n",
        ".": b"250 2.0.0 Ok: queued\r\n", "RSET": b"250 2.0.0 Ok\r\n", "QUIT": b"221 2.0.0 Bye\r\n"}


async def send(session: Session, sender: str, recipient: str, data: bytes, *, utf8: bool, eight_bit: bool) -> Reply:
    """One transaction as a worker runs it, unpipelined: the commands, then the content;
    the deciding reply. Raises SessionFailed if the connection broke."""
    commands = session.commands(sender, recipient, data, utf8=utf8, eight_bit=eight_bit)
    if isinstance(commands, Reply):
        return commands
    refusal = await session.begin(commands)
    if refusal is not None:
        return refusal
    return await session.finish(data)


class Late(bytes):
    """A reply the peer sends a moment later: after the session acted on those before it."""


class Peer:
    """A receiver that answers each command by ``script`` (verb -> reply bytes, a tuple of
    them sent as chunks of their own, or a list of either used in turn); it takes content
    only after answering DATA with 354, as a real one does. All replies to one write go
    back in one chunk, after it (``split``: one chunk each; a `Late` one a moment later)."""

    def __init__(self, script: dict | None = None, *, split: bool = False):
        self.script = {**GOOD, **(script or {})}
        self.split = split
        self.protocol = None
        self.closed = False
        self.commands: list[bytes] = []  # command lines, as received
        self.contents: list[bytes] = []  # message contents taken after a 354
        self._buffer = b""
        self._content: bytes | None = None  # None: command mode

    # the transport side
    def set_protocol(self, protocol) -> None:
        self.protocol = protocol

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def get_extra_info(self, name, default=None):
        return default

    def writelines(self, chunks) -> None:
        self.write(b"".join(chunks))

    def write(self, data: bytes) -> None:
        self._buffer += data
        out = []
        while b"\r\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\r\n", 1)
            if self._content is not None:
                if line == b".":
                    self.contents.append(self._content)
                    self._content = None
                    out.extend(self._answer("."))
                else:
                    self._content += line + b"\r\n"
                continue
            self.commands.append(line)
            verb = line.split(b":")[0].split(b" ")[0].decode().upper()
            reply = self._answer(verb)
            if verb == "DATA" and reply[-1].startswith(b"354"):
                self._content = b""
            out.extend(reply)
        late = [chunk for chunk in out if isinstance(chunk, Late)]
        out = [chunk for chunk in out if not isinstance(chunk, Late)]
        for chunk in (out if self.split else [b"".join(out)]):
            if chunk:
                self.push(chunk)
        for chunk in late:
            asyncio.get_running_loop().call_later(0.05, self.protocol.data_received, bytes(chunk))

    def _answer(self, verb: str) -> tuple[bytes, ...]:
        reply = self.script.get(verb, b"502 5.5.2 unknown command\r\n")
        if isinstance(reply, list):
            reply = reply.pop(0) if len(reply) > 1 else reply[0]
        return reply if isinstance(reply, tuple) else (reply,)

    def push(self, data: bytes) -> None:
        """Bytes from the receiver, arriving after what is under way now."""
        asyncio.get_running_loop().call_soon(self.protocol.data_received, data)


def session_with(peer: Peer, *, pipelining: bool = True) -> Session:
    ext = {"pipelining": ""} if pipelining else {}
    client = SimpleNamespace(esmtp_extensions=ext, transport=peer)
    return Session(client, "mx.receiver.test", "192.0.2.1", Timeouts(*(1.0,) * 7), tls=False)


async def send_one(session: Session) -> Reply:
    return await send(session, SENDER, RECIPIENT, CONTENT, utf8=False, eight_bit=False)


def run_send(peer: Peer, *, pipelining: bool = True) -> Reply | SessionFailed:
    async def go():
        session = session_with(peer, pipelining=pipelining)
        try:
            return await send_one(session)
        except SessionFailed as exc:
            assert not session.usable
            return exc

    return asyncio.run(go())


def assert_protocol_failure(outcome, phase: str | None, *words: str) -> None:
    """A failure of the session (the message deferred: no reply code), naming the phase and
    the reply that did not fit; never a reply that would count as delivered."""
    assert isinstance(outcome, SessionFailed), f"expected a protocol failure, got {outcome}"
    reply = outcome.reply
    assert reply.code is None and not reply.ok
    assert phase is None or reply.phase == phase
    assert "protocol error" in reply.text
    for word in words:
        assert word in reply.text


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_good_receiver_gets_the_message(pipelining: bool) -> None:
    peer = Peer()
    outcome = run_send(peer, pipelining=pipelining)
    assert outcome == Reply(250, "2.0.0 Ok: queued", "message")
    assert peer.contents == [CONTENT]


@pytest.mark.parametrize("pipelining", [True, False])
def test_250_to_data_is_a_protocol_failure_and_no_content_is_sent(pipelining: bool) -> None:
    peer = Peer({"DATA": b"250 2.0.0 Ok\r\n"})
    outcome = run_send(peer, pipelining=pipelining)
    assert_protocol_failure(outcome, "data", "DATA", "250 2.0.0 Ok", "354")
    assert peer.contents == []
    assert peer.commands[-1] == b"DATA"  # not one line of the message after it


@pytest.mark.parametrize("pipelining", [True, False])
def test_354_to_mail_is_a_protocol_failure(pipelining: bool) -> None:
    peer = Peer({"MAIL": b"354 go ahead\r\n"})
    outcome = run_send(peer, pipelining=pipelining)
    assert_protocol_failure(outcome, "mail", "MAIL FROM", "354")
    assert peer.contents == []


@pytest.mark.parametrize("code", [b"220", b"334", b"100", b"abc"])
def test_any_reply_data_cannot_get_is_a_protocol_failure(code: bytes) -> None:
    peer = Peer({"DATA": code + b" whatever\r\n"})
    assert_protocol_failure(run_send(peer), "data")
    assert peer.contents == []


def test_a_recipient_accepted_after_a_refused_mail_is_a_protocol_failure() -> None:
    # No transaction is open after a refused MAIL: RCPT can only be refused (503).
    peer = Peer({"MAIL": b"451 4.3.0 try later\r\n", "DATA": b"503 5.5.1 no valid recipients\r\n"})
    assert_protocol_failure(run_send(peer), "rcpt", "RCPT TO", "250")


def test_an_empty_message_without_recipient_must_be_refused() -> None:
    # RFC 2920 §3.1: DATA accepted after the only RCPT failed gets a lone dot; a 250 to it
    # claims a delivery to nobody.
    peer = Peer({"RCPT": b"550 5.1.1 unknown\r\n", ".": b"250 2.0.0 queued\r\n"})
    assert_protocol_failure(run_send(peer), "message", "empty message")


def test_refusals_in_a_pipelined_group_are_not_protocol_failures() -> None:
    peer = Peer({"RCPT": b"550 5.1.1 unknown\r\n", "DATA": b"554 5.5.1 no valid recipients\r\n"})
    assert run_send(peer) == Reply(550, "5.1.1 unknown", "rcpt")
    assert peer.commands[-1] == b"RSET"


def test_an_extra_reply_before_the_first_command_is_never_taken_as_its_answer() -> None:
    async def go():
        peer = Peer()
        session = session_with(peer)
        peer.push(b"250 2.0.0 unsolicited\r\n")  # before MAIL went out
        await asyncio.sleep(0)
        try:
            return peer, await send_one(session)
        except SessionFailed as exc:
            return peer, exc

    peer, outcome = asyncio.run(go())
    assert_protocol_failure(outcome, "mail", "unsolicited reply 250")
    assert peer.contents == []


@pytest.mark.parametrize("where", ["MAIL", "DATA", "."])
def test_an_extra_reply_with_a_real_one_is_never_taken_as_an_answer(where: str) -> None:
    # One reply too many arrives in a group: which is the answer cannot be known. Before
    # MAIL's reply, after DATA's 354, after the reply to the end of data.
    script = dict(GOOD)
    if where == ".":
        script["."] = GOOD["."] + b"250 2.0.0 extra\r\n"
    else:
        script[where] = b"250 2.0.0 extra\r\n" + GOOD[where]
    peer = Peer(script)
    outcome = run_send(peer)
    assert_protocol_failure(outcome, {"MAIL": "mail", "DATA": None, ".": "message"}[where])
    if where != ".":
        assert peer.contents == []


def test_an_extra_reply_in_a_chunk_of_its_own_is_caught_by_the_sequence() -> None:
    # The extra reply comes first, in a chunk of its own, and the last real one late:
    # counting cannot tell the extra one from an answer, the sequence can (DATA, the
    # group's last command, gets the reply meant for RCPT).
    peer = Peer({"MAIL": (b"250 2.0.0 extra\r\n", GOOD["MAIL"]), "DATA": Late(GOOD["DATA"])}, split=True)
    assert_protocol_failure(run_send(peer), "data", "DATA with 250 2.1.5")
    assert peer.contents == []


def test_a_flood_of_continuation_lines_fails_the_session() -> None:
    peer = Peer({"MAIL": b"250-flood\r\n" * 20000 + b"250 done\r\n"})
    assert_protocol_failure(run_send(peer), "mail", "longer than")
    assert peer.contents == []


# ---- pipelining across transactions: the next message's commands behind this content


def pipelined_pair(peer: Peer) -> tuple[object, object]:
    """Message 1 sent with message 2's MAIL, RCPT and DATA behind its content; then message
    2's content. Each outcome: a Reply, None (begun, waiting for content), or SessionFailed."""

    async def go():
        session = session_with(peer)
        first = second = None
        try:
            assert await session.begin(session.commands(SENDER, RECIPIENT, CONTENT, utf8=False,
                                                        eight_bit=False)) is None
            ahead = session.commands(SENDER, "c@receiver.test", NEXT, utf8=False, eight_bit=False)
            first = await session.finish(CONTENT, ahead)
        except SessionFailed as exc:
            first = exc
        try:
            second = await session.begin(None)
            if second is None:
                second = await session.finish(NEXT)
        except SessionFailed as exc:
            second = exc
        return first, second

    return asyncio.run(go())


def test_pipelined_transactions_get_their_own_replies() -> None:
    peer = Peer({".": [b"250 2.0.0 queued as A\r\n", b"250 2.0.0 queued as B\r\n"]})
    first, second = pipelined_pair(peer)
    assert first == Reply(250, "2.0.0 queued as A", "message")
    assert second == Reply(250, "2.0.0 queued as B", "message")
    assert peer.contents == [CONTENT, NEXT]


def test_a_pipelined_refusal_belongs_to_the_next_message() -> None:
    peer = Peer({"RCPT": [b"250 2.1.5 Ok\r\n", b"550 5.1.1 no such user\r\n"],
                 "DATA": [GOOD["DATA"], b"554 5.5.1 no valid recipients\r\n"]})
    first, second = pipelined_pair(peer)
    assert first == Reply(250, "2.0.0 Ok: queued", "message")
    assert second == Reply(550, "5.1.1 no such user", "rcpt")


def test_250_to_the_pipelined_data_fails_both_and_sends_no_second_content() -> None:
    # The receiver says 250 to every DATA: the first one is caught at once; pipelined
    # behind a content, the second one is caught before the first message's reply counts.
    peer = Peer({"DATA": [GOOD["DATA"], b"250 2.0.0 Ok\r\n"]})
    first, second = pipelined_pair(peer)
    assert_protocol_failure(first, "message", "in doubt", "DATA")
    assert isinstance(second, SessionFailed) and second.reply.code is None
    assert peer.contents == [CONTENT]


def test_an_extra_reply_ahead_of_the_pipelined_replies_is_not_the_first_message_s() -> None:
    # The receiver slips "250" in before its real reply (a refusal) to the first message's
    # end of data: counting alone would credit it to the first message. The group behind it
    # is one reply off (RCPT accepted after a refused MAIL), so the first message's reply is
    # in doubt and it is not reported delivered.
    peer = Peer({".": [(b"250 2.0.0 extra\r\n", b"550 5.7.1 content rejected\r\n")],
                 "DATA": [GOOD["DATA"], Late(GOOD["DATA"])]})
    first, second = pipelined_pair(peer)
    assert_protocol_failure(first, "message", "in doubt", "RCPT TO")
    assert isinstance(second, SessionFailed) and second.reply.code is None
    assert peer.contents == [CONTENT]


def test_a_timeout_on_the_next_transaction_leaves_the_first_message_s_reply() -> None:
    # Not a mismatch: the first message was answered; only the second fails.
    peer = Peer({"MAIL": [GOOD["MAIL"], b""], "RCPT": [GOOD["RCPT"], b""], "DATA": [GOOD["DATA"], b""]})
    first, second = pipelined_pair(peer)
    assert first == Reply(250, "2.0.0 Ok: queued", "message")
    assert isinstance(second, SessionFailed) and second.reply.text == "timed out (mail)"


# ---- 8-bit content to a receiver without 8BITMIME (RFC 6152)

EIGHT_BIT = "Subject: caf\u00e9\r\n\r\nCaf\u00e9 cr\u00e8me, 5 \u20ac\r\n.a line with a dot\r\n".encode()


def eight_bit(mime: str | bytes) -> bytes:
    from mta.intake.message import canonical_data
    return canonical_data(mime.encode() if isinstance(mime, str) else mime)


def contents(data: bytes) -> list[str]:
    """What a reader gets out of a message as sent (dot-stuffed): each leaf part's text."""
    import email
    import email.policy
    message = email.message_from_bytes(data.replace(b"\r\n..", b"\r\n."), policy=email.policy.default)
    return [part.get_content() for part in message.walk() if not part.is_multipart()]


def send_content(data: bytes, *, eight_bit_mime: bool) -> tuple[Peer, Reply]:
    async def go():
        peer = Peer()
        ext = {"pipelining": ""} | ({"8bitmime": ""} if eight_bit_mime else {})
        session = Session(SimpleNamespace(esmtp_extensions=ext, transport=peer), "mx.receiver.test", "192.0.2.1",
                          Timeouts(*(1.0,) * 7), tls=False)
        reply = await send(session, SENDER, RECIPIENT, data, utf8=False, eight_bit=True)
        return peer, reply, session

    peer, reply, session = asyncio.run(go())
    if not reply.ok:
        assert not session.usable and peer.closed  # hung up mid-DATA: the receiver drops it
    return peer, reply


def test_8bit_body_is_sent_as_is_where_8bitmime_is_offered():
    data = eight_bit("From: a@sender.test\nSubject: hi\n\nCaf\u00e9\n")
    peer, reply = send_content(data, eight_bit_mime=True)
    assert reply.ok and peer.contents == [data]
    assert peer.commands[0].endswith(b"BODY=8BITMIME")


def test_8bit_body_is_re_encoded_for_a_receiver_without_8bitmime():
    import email
    import email.policy
    data = eight_bit("From: a@sender.test\nSubject: hi\nContent-Type: text/plain; charset=utf-8\n\n"
                     "Caf\u00e9 cr\u00e8me, 5 \u20ac\n.a line that starts with a dot\n")
    peer, reply = send_content(data, eight_bit_mime=False)
    assert reply.ok
    (sent,) = peer.contents
    assert sent.isascii() and b"BODY=8BITMIME" not in peer.commands[0]
    message = email.message_from_bytes(sent, policy=email.policy.default)
    assert message["Content-Transfer-Encoding"] == "quoted-printable"
    assert contents(sent) == contents(data) == ["Caf\u00e9 cr\u00e8me, 5 \u20ac\r\n.a line that starts with a dot\r\n"]


def test_a_multipart_message_has_only_its_8bit_part_re_encoded():
    import email
    import email.policy
    data = eight_bit("From: a@sender.test\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b1\n\n"
                     "--b1\nContent-Type: text/plain; charset=us-ascii\n\nplain ascii\n"
                     "--b1\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\nna\u00efve\n"
                     "--b1--\n")
    peer, reply = send_content(data, eight_bit_mime=False)
    assert reply.ok
    (sent,) = peer.contents
    assert sent.isascii() and b"\r\n\r\nplain ascii\r\n--b1" in sent  # the 7-bit part byte for byte
    parts = list(email.message_from_bytes(sent, policy=email.policy.default).iter_parts())
    assert contents(sent) == contents(data) == ["plain ascii", "na\u00efve"]
    assert parts[1]["Content-Transfer-Encoding"] == "quoted-printable"


def test_8bit_header_fields_cannot_be_re_encoded_and_bounce():
    # The net under Session.commands, which refuses such a message before MAIL (below).
    from mta.smtp.session import downgrade
    reply = downgrade(eight_bit("From: a@sender.test\nSubject: caf\u00e9\n\nbody\n"))
    assert (reply.code, reply.enhanced, reply.phase) == (550, "5.6.9", "message")
    assert "8-bit header" in reply.text and "SMTPUTF8" in reply.text


def test_a_signed_8bit_message_is_deferred_rather_than_its_signature_broken():
    data = eight_bit("DKIM-Signature: v=1; a=rsa-sha256; d=sender.test; s=s1; bh=x; b=y\n"
                     "From: a@sender.test\nSubject: hi\n\nCaf\u00e9\n")
    peer, reply = send_content(data, eight_bit_mime=False)
    assert (reply.code, reply.enhanced) == (451, "4.6.3") and "DKIM signature" in reply.text
    assert peer.contents == []


def test_8bit_content_that_must_not_be_re_encoded_bounces_with_the_reason():
    data = eight_bit("From: a@sender.test\nContent-Type: text/plain\nContent-Transfer-Encoding: x-uuencode\n\n"
                     "caf\u00e9\n")
    peer, reply = send_content(data, eight_bit_mime=False)
    assert (reply.code, reply.enhanced) == (554, "5.6.3") and "x-uuencode" in reply.text
    assert peer.contents == []


def test_a_pipelined_421_is_the_next_message_s_outcome_and_ends_the_session_then() -> None:
    # The 421 to the next message's RCPT closes the session, but that message was begun:
    # it gets the 421 (a rate-limit reply the destination must learn from), and only then
    # is the session unusable; the first message is not held up by it.
    async def go():
        peer = Peer({"RCPT": [GOOD["RCPT"], b"421 4.7.0 Rate limited: too many messages, slow down\r\n"],
                     "DATA": [GOOD["DATA"], b"503 5.5.1 no valid recipients\r\n"]})
        session = session_with(peer)
        await session.begin(session.commands(SENDER, RECIPIENT, CONTENT, utf8=False, eight_bit=False))
        ahead = session.commands(SENDER, "c@receiver.test", NEXT, utf8=False, eight_bit=False)
        first = await session.finish(CONTENT, ahead)
        usable_between = session.usable
        second = await session.begin(None)
        return first, usable_between, second, session.usable

    first, usable_between, second, usable_after = asyncio.run(go())
    assert first == Reply(250, "2.0.0 Ok: queued", "message")
    assert usable_between is True
    assert second == Reply(421, "4.7.0 Rate limited: too many messages, slow down", "rcpt")
    assert usable_after is False


# ---- SMTPUTF8 when needed and offered (RFC 6531, RFC 6532)

UTF8_HEADERS = eight_bit("From: Andr\u00e9 <a@sender.test>\nSubject: Gr\u00fc\u00dfe\n\nCaf\u00e9\n")
UTF8_BODY = eight_bit("From: a@sender.test\nSubject: hi\n\nCaf\u00e9\n\nGr\u00fc\u00dfe\n")
NON_ASCII_RECIPIENT = "j\u00f6rg@receiver.test"


def offer(*extensions: str) -> dict:
    return {"pipelining": ""} | {name: "" for name in extensions}


def transaction(data: bytes, ext: dict, *, recipient: str = RECIPIENT) -> tuple[Peer, Reply, Session]:
    """One transaction of ``data`` to a receiver offering ``ext``, flagged as delivery flags
    it: 8-bit when any octet is, UTF-8 when an envelope local part is not ASCII."""
    async def go():
        peer = Peer()
        session = Session(SimpleNamespace(esmtp_extensions=ext, transport=peer), "mx.receiver.test", "192.0.2.1",
                          Timeouts(*(1.0,) * 7), tls=False)
        reply = await send(session, SENDER, recipient, data, utf8=not recipient.split("@")[0].isascii(),
                                   eight_bit=not data.isascii())
        return peer, reply, session

    return asyncio.run(go())


def test_8bit_header_fields_go_with_smtputf8_where_it_is_offered():
    peer, reply, _ = transaction(UTF8_HEADERS, offer("8bitmime", "smtputf8"))
    assert reply.ok and peer.contents == [UTF8_HEADERS]
    assert peer.commands[0] == b"MAIL FROM:<a@sender.test> BODY=8BITMIME SMTPUTF8"


@pytest.mark.parametrize("ext", [offer("8bitmime"), offer()], ids=["8bitmime", "nothing"])
def test_8bit_header_fields_bounce_where_smtputf8_is_not_offered(ext: dict):
    # RFC 6531 §3.2: an internationalized message never goes to a receiver without
    # SMTPUTF8; header fields cannot be downgraded (5.6.9, RFC 6531 §4.2). Refused before
    # any command: the session stays good for the next message.
    peer, reply, session = transaction(UTF8_HEADERS, ext)
    assert (reply.code, reply.enhanced, reply.phase) == (550, "5.6.9", "mail")
    assert "8-bit header" in reply.text and "SMTPUTF8" in reply.text
    assert peer.commands == [] and peer.contents == []
    assert session.usable and not peer.closed


def test_an_8bit_body_alone_goes_with_8bitmime_and_without_smtputf8():
    peer, reply, _ = transaction(UTF8_BODY, offer("8bitmime", "smtputf8"))
    assert reply.ok and peer.contents == [UTF8_BODY]
    assert peer.commands[0] == b"MAIL FROM:<a@sender.test> BODY=8BITMIME"


def test_an_8bit_body_alone_is_re_encoded_where_neither_is_offered():
    peer, reply, _ = transaction(UTF8_BODY, offer())
    assert reply.ok and peer.contents[0].isascii()
    assert peer.commands[0] == b"MAIL FROM:<a@sender.test>"


def test_a_7bit_message_goes_without_smtputf8_even_where_it_is_offered():
    peer, reply, _ = transaction(CONTENT, offer("8bitmime", "smtputf8"))
    assert reply.ok and peer.commands[0] == b"MAIL FROM:<a@sender.test>"


def test_a_non_ascii_local_part_goes_with_smtputf8_where_it_is_offered():
    peer, reply, _ = transaction(CONTENT, offer("8bitmime", "smtputf8"), recipient=NON_ASCII_RECIPIENT)
    assert reply.ok
    assert peer.commands[:2] == [b"MAIL FROM:<a@sender.test> SMTPUTF8", f"RCPT TO:<{NON_ASCII_RECIPIENT}>".encode()]


@pytest.mark.parametrize("data", [CONTENT, UTF8_HEADERS], ids=["7bit", "8bit-headers"])
def test_a_non_ascii_local_part_bounces_where_smtputf8_is_not_offered(data: bytes):
    peer, reply, session = transaction(data, offer("8bitmime"), recipient=NON_ASCII_RECIPIENT)
    assert (reply.code, reply.enhanced, reply.phase) == (553, "5.6.7", "mail")
    assert peer.commands == [] and session.usable


@pytest.mark.parametrize("data, utf8", [
    (b"Subject: hi\r\n\r\ncaf\xc3\xa9\r\n", False),
    (b"Subject: caf\xc3\xa9\r\n\r\nbody\r\n", True),
    (b"Subject: hi\r\nX-Note: caf\xc3\xa9\r\n", True),  # no body: all of it is header
    (b"\r\ncaf\xc3\xa9\r\n", False),  # no header fields at all
    (b"Subject: hi\r\n\r\nbody\r\n\r\nX-Not-A-Header: caf\xc3\xa9\r\n", False),
])
def test_utf8_header_fields_are_found_in_the_header_block_only(data: bytes, utf8: bool):
    from mta.smtp.session import utf8_header_fields
    assert utf8_header_fields(data) is utf8
