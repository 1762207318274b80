"""What the inbound receiver answers when the broker or the list cannot take a report
(SPEC §8): never 250 unless the results are confirmed and the entries written; and what
the configuration asks for, no more. The broker is a fake here (its answers are what is
tested); tests/integration/test_inbound.py runs the same against a real one."""

import asyncio
from pathlib import Path

import orjson

from mta.clock import SYSTEM
from mta.config import Suppression as SuppressionConfig
from mta.config import VerpConfig
from mta.inbound.receiver import Receiver
from mta.inbound.verp import Verp, verp_address
from mta.suppression.keys import key
from mta.suppression.service import Suppression

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "reports"
VERP = VerpConfig(domain="bounces.example")
GMAIL_VERP = "bounces+7f3c1a52-9b1e-4c57-8d2a-1e4f5a6b7c8d=nobody.here=gmail.com@bounces.example"


class Broker:
    """Stands in for the listeners' publisher: answers as told, keeps what it was given."""

    def __init__(self, answer=None):
        self.answer = answer  # None: confirm all; a str: why nothing was published; an exception: nack all
        self.published = []

    async def confirmed(self, publishes):
        if isinstance(self.answer, str):
            return self.answer
        self.published.extend(publishes)
        return [self.answer] * len(publishes)


def _receiver(broker, **config) -> tuple[Receiver, Suppression]:
    suppression = Suppression(SuppressionConfig(**config), None, SYSTEM)
    suppression.load()
    return Receiver(Verp(VERP), broker, suppression, SYSTEM.wall), suppression


def _gmail() -> bytes:
    return (SAMPLES / "gmail.eml").read_bytes()


def test_a_hard_late_bounce_is_published_then_listed() -> None:
    broker = Broker()
    receiver, suppression = _receiver(broker)
    reply = asyncio.run(receiver.received(_gmail(), "", [GMAIL_VERP], "192.0.2.1"))
    assert reply.startswith("250 ")
    [publish] = broker.published
    doc = orjson.loads(publish.body)
    assert (publish.routing_key, doc["id"], doc["recipient"], doc["late"], doc["bounce"]) == \
        ("bounced", "7f3c1a52-9b1e-4c57-8d2a-1e4f5a6b7c8d", "nobody.here@gmail.com", True, "hard")
    assert key("global", "nobody.here@gmail.com") in suppression.index
    assert suppression.reader.get_key(key("global", "nobody.here@gmail.com"))["reason"] == "hard_bounce"
    assert receiver.counts == {"bounced": 1} and receiver.suppressed == {"hard_bounce": 1}


def test_a_broker_that_does_not_confirm_gets_451_and_nothing_is_listed() -> None:
    for answer in ("the broker is not connected", RuntimeError("nack")):
        receiver, suppression = _receiver(Broker(answer))
        reply = asyncio.run(receiver.received(_gmail(), "", [GMAIL_VERP], "192.0.2.1"))
        assert reply.startswith("451 4.3.0"), reply
        assert len(suppression.index) == 0 and not receiver.counts


def test_a_full_inspection_queue_gets_452() -> None:
    receiver, _ = _receiver(Broker(RuntimeError("reject-publish")))
    junk = (SAMPLES / "junk_text.eml").read_bytes()
    assert asyncio.run(receiver.received(junk, "a@b.example", ["fbl@bounces.example"], "192.0.2.1")).startswith("452 ")


def test_a_list_that_cannot_write_gets_451() -> None:
    receiver, suppression = _receiver(Broker())
    suppression.writer.close()
    suppression._reports = suppression.writer  # closed: every write fails
    assert asyncio.run(receiver.received(_gmail(), "", [GMAIL_VERP], "192.0.2.1")).startswith("451 ")


def test_with_hard_bounces_off_the_result_is_published_and_nothing_listed() -> None:
    broker = Broker()
    receiver, suppression = _receiver(broker, hard_bounces=False)
    assert asyncio.run(receiver.received(_gmail(), "", [GMAIL_VERP], "192.0.2.1")).startswith("250 ")
    assert len(broker.published) == 1 and len(suppression.index) == 0


def test_one_mail_to_two_verp_addresses_is_two_results() -> None:
    broker = Broker()
    receiver, _ = _receiver(broker)
    other = verp_address(VERP, "second-id", "someone.else@gmail.com")
    data = _gmail()
    asyncio.run(receiver.received(data, "", [GMAIL_VERP, other, GMAIL_VERP], "192.0.2.1"))
    docs = [orjson.loads(p.body) for p in broker.published]
    assert [(d["id"], d["recipient"]) for d in docs] == [
        ("7f3c1a52-9b1e-4c57-8d2a-1e4f5a6b7c8d", "nobody.here@gmail.com"), ("second-id", "someone.else@gmail.com")]


def test_with_a_signed_verp_only_a_signed_address_names_a_message() -> None:
    signed = Verp(VERP, b"key")
    broker = Broker()
    suppression = Suppression(SuppressionConfig(), None, SYSTEM)
    suppression.load()
    receiver = Receiver(signed, broker, suppression, SYSTEM.wall)
    # the sample's unsigned VERP address (anyone could write it): kept, nothing listed
    assert asyncio.run(receiver.received(_gmail(), "", [GMAIL_VERP], "192.0.2.1")).startswith("250 ")
    assert [p.routing_key for p in broker.published] == ["mta.inbound.unmatched"] and len(suppression.index) == 0
    # an X-Mta-Id header in the returned copy is no better
    forged = _gmail().replace(b"Message-ID: <20261130161458.4f1c2d@shop.example>",
                              b"Message-ID: <20261130161458.4f1c2d@shop.example>\r\nX-Mta-Id: 7f3c1a52")
    asyncio.run(receiver.received(forged, "", ["postmaster@bounces.example"], "192.0.2.1"))
    assert len(suppression.index) == 0 and receiver.counts == {"unmatched": 2}
    # the address we signed for that message and recipient
    address = verp_address(signed, "7f3c1a52-9b1e-4c57-8d2a-1e4f5a6b7c8d", "nobody.here@gmail.com")
    assert asyncio.run(receiver.received(_gmail().replace(GMAIL_VERP.encode(), address.encode()), "", [address],
                                         "192.0.2.1")).startswith("250 ")
    assert key("global", "nobody.here@gmail.com") in suppression.index


def test_a_report_sent_to_many_addresses_makes_each_result_once() -> None:
    # A DSN matched by its X-Mta-Id (no VERP address among the recipients) names two
    # failed recipients; the same mail to 100 of our addresses is still those two results
    # and one entry, not 200 results and 100 writes to the list.
    broker = Broker()
    receiver, suppression = _receiver(broker)
    data = (SAMPLES / "postfix_dsn.eml").read_bytes()
    rcpts = [f"fbl{i}@bounces.example" for i in range(100)]
    assert asyncio.run(receiver.received(data, "", rcpts, "192.0.2.1")).startswith("250 ")
    docs = [orjson.loads(p.body) for p in broker.published]
    assert sorted((d["id"], d["recipient"], d["bounce"]) for d in docs) == [
        ("invite-881", "alice@example.com", "hard"), ("invite-881", "bob@example.com", "soft")]
    assert receiver.suppressed == {"hard_bounce": 1}


def test_a_mail_is_read_once_whatever_its_recipients(monkeypatch) -> None:
    from mta.inbound import mime

    loads = []
    real = mime.load
    monkeypatch.setattr(mime, "load", lambda data: loads.append(len(data)) or real(data))
    receiver, _ = _receiver(Broker())
    rcpts = [verp_address(VERP, f"id-{i}", f"user{i}@gmail.com") for i in range(100)]
    assert asyncio.run(receiver.received(_gmail(), "", rcpts, "192.0.2.1")).startswith("250 ")
    assert len(loads) == 1


def test_mails_arriving_together_are_read_one_at_a_time(monkeypatch) -> None:
    # Parsing holds the GIL: however many connections deliver at once, one thread reads,
    # so the event loop and the threads the rest of the engine uses keep their share.
    import threading
    import time

    from mta.inbound import receiver as module

    lock, running, most = threading.Lock(), [0], [0]
    real = module.parse_reports

    def parse(*args):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)  # a long parse, so that the calls would overlap if they could
        with lock:
            running[0] -= 1
        return real(*args)

    monkeypatch.setattr(module, "parse_reports", parse)
    receiver, _ = _receiver(Broker())

    async def many():
        return await asyncio.gather(*(receiver.received(_gmail(), "", [GMAIL_VERP], "192.0.2.1") for _ in range(6)))

    assert all(reply.startswith("250 ") for reply in asyncio.run(many()))
    assert most[0] == 1


def test_octets_that_are_not_utf8_in_the_envelope_do_not_lose_the_report() -> None:
    # aiosmtpd keeps such octets as lone surrogates, which neither JSON nor AMQP carries:
    # the report raised (500, and the sender gives up) or its kept copy got 451 forever.
    from mta.broker.publish import marshal

    broker = Broker()
    receiver, _ = _receiver(broker)
    junk = (SAMPLES / "junk_text.eml").read_bytes()
    odd = "bounces+abc=n\udcffbody=gmail.com@bounces.example"
    for data, mail_from, rcpt in ((_gmail(), "mailer-daemon@gm\udce4il.example", GMAIL_VERP),
                                  (junk, "x\udcff@a.example", "fbl@bounces.example"), (_gmail(), "", odd)):
        assert asyncio.run(receiver.received(data, mail_from, [rcpt], "192.0.2.1")).startswith("250 ")
    for publish in broker.published:
        marshal(1, publish, "m1", 131072)  # raises Unencodable for what AMQP cannot carry
    docs = [orjson.loads(p.body) for p in broker.published if p.exchange == "mta.results"]
    assert [d["report"]["from"] for d in docs] == ["mailer-daemon@gm\ufffdil.example", ""]
    assert docs[1]["recipient"] == "n\ufffdbody@gmail.com"
    [kept] = [p for p in broker.published if p.exchange == ""]
    assert kept.headers["mail_from"] == "x\ufffd@a.example"


def test_entries_from_reports_reach_the_disk_before_the_reply(tmp_path) -> None:
    # The list's own writes use WAL with synchronous=NORMAL, which a power loss may undo;
    # an entry from a report is promised by the 250, so its commit waits for the disk.
    suppression = Suppression(SuppressionConfig(), str(tmp_path / "rules.yaml"), SYSTEM)
    suppression.load()
    assert asyncio.run(suppression.report([("a@example.org", "hard_bounce", "m-1")])) == {"hard_bounce": 1}
    assert suppression._reports.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert suppression.reader.get_key(key("global", "a@example.org"))["reason"] == "hard_bounce"


def test_an_entry_from_a_report_naming_an_international_domain_suppresses_the_next_message() -> None:
    # An SMTPUTF8 DSN names the recipient as the receiver wrote it (U-labels, any case);
    # the list is looked up by the A-label domain intake gives every message.
    import orjson as json

    from mta.intake.message import decode

    suppression = Suppression(SuppressionConfig(), None, SYSTEM)
    suppression.load()
    assert asyncio.run(suppression.report([("jürgen@Bücher.Example", "hard_bounce", "m-1")]))
    job = decode(json.dumps({"recipient": "jürgen@bücher.example", "envelope": "", "mime": "Subject: x\n\nx\n"}),
                 {}, "bulk", 1_700_000_000.0)
    entry = suppression.check(job)
    assert entry is not None and entry["message_id"] == "m-1"


def test_a_reports_entries_are_written_in_one_transaction(monkeypatch) -> None:
    # One commit (one wait for the disk) per mail, not per entry: the writes of every
    # listener's reports wait in one line.
    from mta.suppression.store import Store

    writes = []
    real = Store.add
    monkeypatch.setattr(Store, "add", lambda self, entries, now: writes.append(list(entries)) or real(self, entries, now))
    suppression = Suppression(SuppressionConfig(complaints=False), None, SYSTEM)
    suppression.load()
    added = asyncio.run(suppression.report([("a@example.org", "hard_bounce", "m-1"), ("b@example.org", "complaint", "m-2"),
                                            ("c@example.org", "hard_bounce", "m-3")]))
    assert added == {"hard_bounce": 2}  # complaints are off
    assert [[e["address"] for e in w] for w in writes] == [["a@example.org", "c@example.org"]]
    assert key("global", "c@example.org") in suppression.index and key("global", "b@example.org") not in suppression.index


def test_a_bounce_to_a_non_ascii_verp_address_names_that_recipient_and_suppresses_the_next_message() -> None:
    # SMTPUTF8: the recipient's local part travels inside ours as it is.
    import orjson as json

    from mta.intake.message import decode

    broker = Broker()
    receiver, suppression = _receiver(broker)
    rcpt = verp_address(VERP, "id-ü 1", "jürgen@example.org")
    data = (SAMPLES / "verp_useless.eml").read_bytes()
    assert asyncio.run(receiver.received(data, "", [rcpt], "192.0.2.1")).startswith("250 ")
    [doc] = [orjson.loads(p.body) for p in broker.published]
    assert (doc["id"], doc["recipient"], doc["bounce"]) == ("id-ü 1", "jürgen@example.org", "hard")
    job = decode(json.dumps({"recipient": "jürgen@example.org", "envelope": "", "mime": "Subject: x\n\nx\n"}),
                 {}, "bulk", 1_700_000_000.0)
    assert suppression.check(job)["message_id"] == "id-ü 1"


def test_what_a_result_quotes_from_a_report_is_bounded() -> None:
    # The returned copy's Message-ID and the reporting MTA are the sender's words, copied
    # into every result of the mail: 20,000 characters each must not become 100 results
    # of 40 KB (a description is at most 512 octets; so is each of these).
    broker = Broker()
    receiver, _ = _receiver(broker)
    data = (SAMPLES / "postfix_dsn.eml").read_bytes()
    data = data.replace(b"Message-ID: <20261201143037.team@shop.example>", b"Message-ID: <" + b"m" * 20_000 + b">")
    data = data.replace(b"Reporting-MTA: dns; mail.example.com", b"Reporting-MTA: dns; " + b"r" * 20_000)
    assert asyncio.run(receiver.received(data, "", ["fbl@bounces.example"], "192.0.2.1")).startswith("250 ")
    assert len(broker.published) == 2
    for publish in broker.published:
        doc = orjson.loads(publish.body)
        assert doc["report"]["message_id"].startswith("<mmm") and doc["report"]["reporting_mta"].startswith("rrr")
        assert all(len(str(v).encode()) <= 512 for v in doc["report"].values()), doc["report"]
        assert len(publish.body) < 4096
