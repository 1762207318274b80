"""`envelope_verp` on the way out (SPEC §8): each message leaves with an envelope sender
naming it and its recipient; the null sender stays null; a recipient VERP cannot carry,
or an address longer than SMTP allows, leaves with the producer's sender; a retry copy
leaves as the first did; and SMTPUTF8 is asked for when what goes on the wire needs it."""

from __future__ import annotations

import orjson

from mta.config import VerpConfig
from mta.destinations.worker import _commands
from mta.inbound.verp import verp_decode
from mta.intake.accept import Intake
from mta.intake.message import decode
from mta.settle.results import carried

NOW = 1_700_000_000.0
VERP = VerpConfig(domain="bounces.example")
MIME = "From: a@sender.example\nTo: b@example.com\nSubject: hi\n\nHello\n"


class Router:
    def __init__(self):
        self.routed = []

    def route(self, job) -> None:
        self.routed.append(job)


class Session:
    """Stands in for an SMTP session: says what it was asked to send."""

    def commands(self, sender, recipient, data, *, utf8, eight_bit):
        return sender, utf8


def admitted(headers: dict | None = None, **fields):
    doc = {"recipient": "jane.doe@Example.ORG", "envelope": "shop@sender.example", "mime": MIME, "id": "m-1"}
    doc.update(fields)
    doc = {k: v for k, v in doc.items() if v is not None}
    intake = Intake(lambda: NOW, {}, 10**7, None, Router(), None, verp=VERP)
    job = decode(orjson.dumps(doc), headers or {}, "bulk", NOW)
    intake.admitted(job)
    assert intake.router.routed == [job]
    return job


def test_every_message_leaves_with_its_own_envelope_sender() -> None:
    job = admitted()
    assert job.mail_from == "bounces+m-1=jane.doe=example.org@bounces.example"
    assert _commands(Session(), job) == (job.mail_from, False)
    assert job.sender.text == "shop@sender.example"  # what the results carry


def test_a_numeric_id_and_odd_characters_travel() -> None:
    assert verp_decode(VERP, admitted(id=9007199254740993).mail_from) == ("9007199254740993", "jane.doe@example.org")
    odd = "a=b/c d+é_1"
    assert verp_decode(VERP, admitted(id=odd).mail_from) == (odd, "jane.doe@example.org")


def test_the_null_sender_stays_null() -> None:
    job = admitted(envelope="")
    assert job.mail_from is None
    assert _commands(Session(), job) == ("", False)


def test_a_recipient_verp_cannot_carry_leaves_with_the_producers_sender() -> None:
    job = admitted(recipient='"john doe"@example.org')
    assert job.mail_from is None
    assert _commands(Session(), job) == ("shop@sender.example", False)


def test_an_envelope_sender_longer_than_smtp_allows_is_not_used() -> None:
    # RFC 5321 §4.5.3.1.3: a path of at most 256 octets; intake refuses producers' longer
    # addresses, and receivers (our inbound listener among them) refuse such a RCPT TO,
    # so the message would bounce, or its bounce would never come back.
    for message_id in ("x" * 220, "é" * 40):
        job = admitted(id=message_id)
        assert job.mail_from is None
        assert _commands(Session(), job) == ("shop@sender.example", False)
    assert len(admitted(id="x" * 150).mail_from) <= 254


def test_a_retry_copy_leaves_as_the_first_did() -> None:
    # Without a producer's id the first copy's (a UUID of its body) travels in x-mta-id.
    first = admitted(id=None)
    first.attempts = 1
    queue = "mta.wait.bulk.600"
    death = {"x-death": [{"count": 1, "reason": "expired", "queue": queue, "exchange": "", "routing-keys": [queue]}]}
    retry = admitted({**carried(first), **death}, id=None, extra="changes the body")
    assert retry.attempts == 1 and retry.id == first.id
    assert retry.mail_from == first.mail_from == f"bounces+{first.id}=jane.doe=example.org@bounces.example"


def test_smtputf8_follows_the_address_on_the_wire() -> None:
    # A producer's non-ASCII sender does not go out behind VERP: no SMTPUTF8 needed for it
    # (asking for it bounced the message at every receiver without SMTPUTF8).
    job = admitted(envelope="jürgen@sender.example")
    assert _commands(Session(), job) == ("bounces+m-1=jane.doe=example.org@bounces.example", False)
    job = admitted(recipient="jürgen@example.org")
    assert _commands(Session(), job) == ("bounces+m-1=jürgen=example.org@bounces.example", True)
    job = admitted(envelope="jürgen@sender.example", recipient='"john doe"@example.org')
    assert _commands(Session(), job) == ("jürgen@sender.example", True)
