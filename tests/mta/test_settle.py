"""The settler (mta/settle.py) against a scripted broker: what replaces each consumed
delivery is published, and the delivery is acknowledged only when all of that is confirmed;
a publish AMQP cannot carry fails alone and its delivery still ends in one final place; an
attempt's reply text and the history carried on retry copies stay bounded."""

from __future__ import annotations

import asyncio

import msgspec
import orjson
import pytest

from mta.broker.errors import BrokerLost
from mta.clock import Clock
from mta.intake.message import H_ATTEMPTS, H_FIRST, H_RESULTS, decode
from mta.broker.topology import delay_queue
from mta.settle.acks import AckBook
from mta.settle.results import DESCRIPTION_MAX, HISTORY_KEPT, attempt_entry, carried as carried_by
from mta.settle.settler import Settler
from tests.fakes import FakeConsumeChannel, FakePublishChannel

NOW = 1_800_000_000.0
MIME = "From: a@sender.example\nTo: b@example.com\nSubject: hi\n\nHello\n"


class Session:
    def __init__(self, broker):
        self.channel = broker


class Topology:
    async def ensure_delay(self, channel, lane: str, seconds: int) -> str:
        return delay_queue(lane, seconds)


def job_of(n: int, **headers):
    body = orjson.dumps({"id": f"m{n}", "recipient": f"user{n}@example.com", "envelope": "b@sender.example",
                         "mime": MIME})
    return decode(body, headers, "bulk", NOW)


async def settle(broker, actions):
    """Run the settler over `actions` (callables taking (settler, book, tag)), tags 1..n."""
    settler = Settler(Session(broker), Topology(), publish_timeout=5)
    consuming = FakeConsumeChannel()
    book = AckBook(consuming)
    for tag, action in enumerate(actions, 1):
        book.received(tag)
        action(settler, book, tag)
    runner = asyncio.create_task(settler.run())
    await asyncio.wait_for(settler.wait_idle(), 5)
    runner.cancel()
    return consuming


def delivered(n):
    def act(settler, book, tag):
        job = job_of(n)
        job.attempts += 1
        job.history.append(attempt_entry(NOW, "message", 250, "2.0.0", "ok", "mx", "192.0.2.1", "bulk"))
        settler.final(job, book, tag, "delivered")
    return act


def test_an_invalid_copy_goes_out_without_the_headers_amqp_cannot_carry():
    broker = FakePublishChannel()
    headers = {"x-producer": b"\xff\xfe", "x-trace": "t-1", "x-mta-attempts": 3}

    def invalid(settler, book, tag):
        settler.invalid(b"not json", headers, "body is not valid JSON", book, tag, "single", NOW)

    consuming = asyncio.run(settle(broker, [delivered(1), invalid, delivered(3)]))

    assert consuming.acked_tags({1, 2, 3}) == {1, 2, 3} and not consuming.requeued
    copies = [p for p in broker.published if p["routing_key"] == "mta.invalid"]
    assert len(copies) == 1 and copies[0]["body"] == b"not json"
    kept = copies[0]["headers"]
    assert kept["x-trace"] == "t-1" and "x-producer" not in kept and "x-mta-attempts" not in kept
    assert kept["x-mta-error"].startswith("body is not valid JSON")
    assert "x-producer" in kept["x-mta-error"]  # says what was left out
    statuses = [orjson.loads(p["body"])["status"] for p in broker.published if p["exchange"] == "mta.results"]
    assert statuses == ["delivered", "invalid", "delivered"]


def test_a_retry_copy_that_cannot_be_encoded_ends_in_mta_invalid_with_a_reason():
    broker = FakePublishChannel()
    # a first-acceptance time far beyond any AMQP integer once carried as milliseconds
    # (intake no longer lets one in: this stands for any header the encoder refuses)
    bad = job_of(2)
    bad.first_seen = 1e27

    def defer(settler, book, tag):
        bad.attempts += 1
        bad.history.append(attempt_entry(NOW, "rcpt", 451, "4.3.0", "4.3.0 later", "mx", "192.0.2.1", "bulk"))
        settler.defer(bad, book, tag, 60)

    consuming = asyncio.run(settle(broker, [delivered(1), defer, delivered(3)]))

    assert consuming.acked_tags({1, 2, 3}) == {1, 2, 3} and not consuming.requeued
    assert not [p for p in broker.published if p["routing_key"].startswith("mta.wait.")]
    copies = [p for p in broker.published if p["routing_key"] == "mta.invalid"]
    assert len(copies) == 1 and copies[0]["body"] == bad.body
    assert "could not be republished" in copies[0]["headers"]["x-mta-error"]
    results = [orjson.loads(p["body"]) for p in broker.published if p["exchange"] == "mta.results"]
    assert [r["status"] for r in results] == ["delivered", "invalid", "delivered"]
    assert results[1]["final"] is True and results[1]["attempts"] == 1
    assert "could not be republished" in results[1]["error"]
    assert [e["code"] for e in results[1]["results"]] == [451]


def test_a_nack_leaves_only_its_own_delivery_unacknowledged():
    broker = FakePublishChannel(refuse={"bounced"})

    def bounced(settler, book, tag):
        settler.final(job_of(2), book, tag, "bounced", "hard")

    def deferred(n):
        def act(settler, book, tag):
            job = job_of(n)
            job.attempts += 1
            settler.defer(job, book, tag, 60)
        return act

    consuming = asyncio.run(settle(broker, [delivered(1), bounced, deferred(3), delivered(4)]))

    assert consuming.requeued == [2]
    assert consuming.acked_tags({1, 2, 3, 4}) == {1, 3, 4}


def test_a_nacked_result_of_a_deferral_leaves_it_unacknowledged():
    broker = FakePublishChannel(refuse={"deferred"})  # the retry copy is confirmed, its result refused

    def deferred(settler, book, tag):
        job = job_of(1)
        job.attempts += 1
        settler.defer(job, book, tag, 60)

    consuming = asyncio.run(settle(broker, [deferred, delivered(2)]))
    assert consuming.requeued == [1]
    assert consuming.acked_tags({1, 2}) == {2}


# ---- reply text and history size


@pytest.mark.parametrize("text", [
    "4.2.0 " + "x" * 65_000,
    "4.2.0 " + "\u00e9" * 40_000,  # two octets each
    "4.2.0 " + "\u4e2d" * 30_000,  # three
    "4.2.0 " + "\U0001f600" * 20_000,  # four
    "4" + "\u00e9" * 300,  # a boundary inside a character at octet 512
])
def test_reply_text_is_cut_to_512_octets_on_a_character_boundary(text):
    entry = attempt_entry(NOW, "rcpt", 451, "4.2.0", text, "mx", "192.0.2.1", "bulk")
    raw = entry["description"].encode("utf-8")
    assert len(raw) <= DESCRIPTION_MAX == 512
    assert entry["description"].endswith("…")
    assert text.startswith(entry["description"][:-1])
    assert len(raw) > DESCRIPTION_MAX - 4  # nothing cut that need not be


def test_short_reply_text_is_kept_whole():
    text = "4.3.0 " + "\u4e2d" * 160  # 486 octets
    assert attempt_entry(NOW, "rcpt", 451, "4.3.0", text, "mx", "192.0.2.1", "bulk")["description"] == text


def test_fifty_attempts_carry_a_bounded_history_and_the_true_count():
    job = job_of(1)
    long_host = "mx." + "h" * 240 + ".example"
    for n in range(50):
        job.attempts += 1
        job.history.append(attempt_entry(NOW + n, "rcpt", 451, "4.2.0", "\x01" * 5000, long_host,
                                         "2001:db8::1", "bulk"))
        job.history[-1]["tls"] = True
        job.history[-1]["cipher"] = "TLSv1.3 TLS_AES_256_GCM_SHA384"
        # what the next attempt decodes from the retry copy, as our delay queue gives it back
        carried = {**carried_by(job), "x-death": [{"reason": "expired", "queue": delay_queue("bulk", 60)}]}
        job = decode(job.body, carried, "bulk", NOW + n)
    carried = carried_by(job)
    assert len(carried[H_RESULTS].encode()) < 40_000
    assert len(orjson.loads(carried[H_RESULTS])) == HISTORY_KEPT == 10
    assert carried[H_ATTEMPTS] == 50

    settler = Settler(Session(FakePublishChannel()), Topology(), publish_timeout=5)
    result = orjson.loads(settler.result(job, "deferred"))
    assert result["attempts"] == 50
    assert len(result["results"]) == 10 and result["results_omitted"] == 40
    assert [e["time"] for e in result["results"]] == [job.history[k]["time"] for k in range(-10, 0)]


def test_a_result_without_dropped_attempts_says_nothing_of_omissions():
    job = job_of(1)
    job.attempts = 2
    job.history = [attempt_entry(NOW, "rcpt", 451, None, "later", None, None, "bulk")] * 2
    settler = Settler(Session(FakePublishChannel()), Topology(), publish_timeout=5)
    result = orjson.loads(settler.result(job, "deferred"))
    assert "results_omitted" not in result and len(result["results"]) == 2


def test_an_invalid_copy_whose_headers_only_together_exceed_a_frame_keeps_the_reason():
    broker = FakePublishChannel()
    headers = {"x-a": "a" * 70_000, "x-b": "b" * 70_000}

    def invalid(settler, book, tag):
        settler.invalid(b"[]", headers, "body must be a JSON object, got list", book, tag, "bulk", NOW)

    consuming = asyncio.run(settle(broker, [invalid, delivered(2)]))
    assert consuming.acked_tags({1, 2}) == {1, 2}
    copy = next(p for p in broker.published if p["routing_key"] == "mta.invalid")
    assert set(copy["headers"]) == {"x-mta-error", "x-mta-lane"}
    assert copy["headers"]["x-mta-error"].startswith("body must be a JSON object, got list; ")


# ---- exact integers and invalid counts

BIG = 123456789012345678901  # beyond 64 bits: orjson would read it as 1.2345678901234568e+20


def results_of(broker) -> list[dict]:
    """The published results as msgspec reads them: integers of any size stay exact."""
    return [msgspec.json.decode(p["body"]) for p in broker.published if p["exchange"] == "mta.results"]


def test_an_invalid_result_echoes_integers_beyond_64_bits_exactly():
    broker = FakePublishChannel()
    body = (b'{"id": 123456789012345678901, "recipient": "no-at-sign", "envelope": "", "mime": "x",'
            b' "trace": {"span": 123456789012345678901, "small": -3, "ratio": 0.5}}')

    def invalid(settler, book, tag):
        settler.invalid(body, {}, "recipient: not of the form local@domain", book, tag, "bulk", NOW)

    asyncio.run(settle(broker, [invalid]))
    [result] = results_of(broker)
    assert result["status"] == "invalid" and result["error"] == "recipient: not of the form local@domain"
    assert result["id"] == BIG and isinstance(result["id"], int)
    assert result["trace"] == {"span": BIG, "small": -3, "ratio": 0.5}
    assert "mime" not in result


def test_a_retry_copy_redirected_to_invalid_echoes_integers_beyond_64_bits_exactly():
    broker = FakePublishChannel()
    body = orjson.dumps({"recipient": "user@example.com", "envelope": "b@sender.example", "mime": MIME})
    bad = decode(body[:-1] + b', "id": 123456789012345678901, "trace": [123456789012345678901]}', {}, "bulk", NOW)
    bad.first_seen = 1e27  # a header the encoder refuses

    def defer(settler, book, tag):
        bad.attempts += 1
        bad.history.append(attempt_entry(NOW, "rcpt", 451, "4.3.0", "4.3.0 later", "mx", "192.0.2.1", "bulk"))
        settler.defer(bad, book, tag, 60)

    asyncio.run(settle(broker, [defer]))
    [result] = results_of(broker)
    assert result["status"] == "invalid" and result["id"] == BIG and result["trace"] == [BIG]


def test_a_copy_redirected_to_invalid_is_counted_where_the_metrics_read_it():
    from prometheus_client import generate_latest

    from tests.fakes import FakeEngine

    engine = FakeEngine(clock=lambda: NOW)
    engine.counts = {"consumed": 3, "deferred": 1, "held": 1, "invalid": 1}  # one refused at intake
    broker = FakePublishChannel()
    retried, held = job_of(2), job_of(3)
    retried.first_seen = held.first_seen = 1e27  # a header the encoder refuses

    def defer(settler, book, tag):
        retried.attempts += 1
        retried.history.append(attempt_entry(NOW, "rcpt", 451, "4.3.0", "4.3.0 later", "mx", "192.0.2.1", "bulk"))
        settler.defer(retried, book, tag, 60)

    def hold(settler, book, tag):
        settler.hold(held, book, tag, 60)

    def invalid(settler, book, tag):  # refused at intake: the engine counted it already
        settler.invalid(b"[]", {"x-bad": b"\xff"}, "body must be a JSON object, got list", book, tag, "bulk", NOW)

    async def scenario():
        settler = Settler(Session(broker), Topology(), publish_timeout=5, counts=engine.counts)
        consuming = FakeConsumeChannel()
        book = AckBook(consuming)
        for tag, action in enumerate([defer, hold, invalid], 1):
            book.received(tag)
            action(settler, book, tag)
        runner = asyncio.create_task(settler.run())
        await asyncio.wait_for(settler.wait_idle(), 5)
        runner.cancel()
        return consuming

    consuming = asyncio.run(scenario())
    assert consuming.acked_tags({1, 2, 3}) == {1, 2, 3}
    assert len([p for p in broker.published if p["routing_key"] == "mta.invalid"]) == 3
    assert engine.counts["invalid"] == 3  # the two redirected copies, and the one intake refused
    text = generate_latest(engine.metrics.registry).decode()
    assert "mta_messages_invalid_total 3.0" in text


# ---- the settler keeps going whatever one settlement does


def deferred_job(n: int, first_seen: float | None = None):
    job = job_of(n)
    if first_seen is not None:
        job.first_seen = first_seen
    job.attempts += 1
    job.history.append(attempt_entry(NOW, "rcpt", 451, "4.3.0", "4.3.0 later", "mx", "192.0.2.1", "bulk"))
    return job


def test_a_bug_preparing_a_settlement_ends_the_run_with_nothing_of_its_batch_written(monkeypatch):
    # the supervisor (the engine) sees the bug and ends the session: every delivery comes back
    broker = FakePublishChannel()
    bad = deferred_job(2, first_seen=1e27)  # its retry copy cannot be encoded: replaced, then the bug
    plain = Settler._unencodable

    async def broken(self, publisher, s, error):
        if s.job is bad:
            raise RuntimeError("unforeseen")
        return await plain(self, publisher, s, error)

    monkeypatch.setattr(Settler, "_unencodable", broken)

    async def scenario():
        settler = Settler(Session(broker), Topology(), publish_timeout=5)
        consuming = FakeConsumeChannel()
        book = AckBook(consuming)
        for tag, action in enumerate([delivered(1), lambda st, b, t: st.defer(bad, b, t, 60), delivered(3)], 1):
            book.received(tag)
            action(settler, book, tag)
        with pytest.raises(RuntimeError, match="unforeseen"):
            await asyncio.wait_for(settler.run(), 5)
        return consuming

    consuming = asyncio.run(scenario())
    assert broker.published == []
    assert consuming.acked == [] and consuming.requeued == []


def test_a_bug_settling_a_batch_acknowledges_what_was_settled_and_the_next_run_goes_on(monkeypatch):
    broker = FakePublishChannel()
    plain = Settler._confirmed

    def broken(self, s, span, outcomes, started, gone):
        if s.tag == 2 and s.book.channel is first:
            raise RuntimeError("unforeseen")
        return plain(self, s, span, outcomes, started, gone)

    monkeypatch.setattr(Settler, "_confirmed", broken)
    first, second = FakeConsumeChannel(), FakeConsumeChannel()

    async def scenario():
        settler = Settler(Session(broker), Topology(), publish_timeout=5)
        book = AckBook(first)
        for tag in (1, 2, 3):
            book.received(tag)
            delivered(tag)(settler, book, tag)
        with pytest.raises(RuntimeError, match="unforeseen"):
            await asyncio.wait_for(settler.run(), 5)
        first.is_closed = True  # the session ends: the broker redelivers 2 and 3
        settler.attach(Session(FakePublishChannel()))
        book = AckBook(second)
        book.received(1)
        delivered(3)(settler, book, 1)  # the redelivered copy of 3, in the next session
        runner = asyncio.create_task(settler.run())
        await asyncio.wait_for(settler.wait_idle(), 5)
        runner.cancel()

    asyncio.run(scenario())
    assert first.acked == [(1, True)]  # settled before the bug: its result is out, so it is acknowledged
    assert second.acked == [(1, True)]


def test_a_huge_id_is_never_logged_whole(caplog):
    broker = FakePublishChannel()
    huge = deferred_job(2)
    huge.id = "x" * 200_000  # (intake refuses such an id now; one that got in is still settled)

    def defer(settler, book, tag):
        settler.defer(huge, book, tag, 60)

    consuming = asyncio.run(settle(broker, [defer]))

    assert consuming.acked_tags({1}) == {1}
    assert [r["status"] for r in results_of(broker)] == ["invalid"]
    assert caplog.records and max(len(r.getMessage()) for r in caplog.records) < 1000


def test_a_new_session_does_not_write_what_was_pending_for_the_old_channels():
    settler = Settler(Session(FakePublishChannel()), Topology(), publish_timeout=5)
    old, new = FakeConsumeChannel(), FakeConsumeChannel()
    for channel, tag in ((old, 1), (new, 1)):
        book = AckBook(channel)
        book.received(tag)
        delivered(tag)(settler, book, tag)
    old.is_closed = True
    settler.attach(Session(FakePublishChannel()))
    assert [s.book.channel for s in settler._pending] == [new]


def test_a_session_that_fails_while_starting_leaves_no_settler_running(monkeypatch):
    # the next session starts its own: two loops over one settler would write batches twice
    import aio_pika

    from mta.config import parse_config
    from mta.engine import Engine

    class Channel:
        is_closed = False
        close_callbacks: set = set()

    class Connection:
        is_closed = False

        def __init__(self, role):
            self.role = role
            self.close_callbacks = set()

        async def channel(self, **kwargs):
            if self.role == "consume":
                raise OSError("connection reset")
            return Channel()

        async def close(self):
            self.is_closed = True

    roles = iter(["consume", "publish"])

    async def connect(url, **kwargs):
        return Connection(next(roles))

    async def declare(channel):
        return None

    monkeypatch.setattr(aio_pika, "connect", connect)

    async def scenario():
        engine = Engine(parse_config({}), clock=Clock(lambda: NOW))
        monkeypatch.setattr(engine.topology, "declare", declare)
        with pytest.raises(BrokerLost):  # the OSError, in our words (mta.broker.errors)
            await engine._session(asyncio.Event())
        await asyncio.sleep(0)
        return [t for t in asyncio.all_tasks() if t.get_name() == "settler" and not t.done()]

    assert asyncio.run(scenario()) == []
