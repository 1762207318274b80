"""The event store's writer process and the tracker's batches (SPEC §9): rows written by a
child process; a batch the store does not take is kept and tried again, said once."""

import asyncio
import logging
import os
from types import SimpleNamespace

from mta.config import Tracking
from mta.settle.results import dumps, result_doc
from mta.tracking import events
from mta.tracking.store import EventStore
from mta.tracking.tracker import Tracker
from mta.tracking.child import NICE
from mta.tracking.writer import WriterProcess

NOW = 1_795_856_400.0


def _job(message_id: str):
    return SimpleNamespace(id=message_id, recipient=SimpleNamespace(text="a@x.test"), attempts=0, lane="bulk",
                           tags=(), doc={}, history=[])


def _settled(tracker: Tracker, message_id: str, status: str) -> None:
    """What the engine's outcomes do: the result as published, beside the job."""
    job = _job(message_id)
    tracker.settled(job, status, None, dumps(result_doc(job, status)))


def test_the_writer_process_writes_and_stops(tmp_path) -> None:
    path = str(tmp_path / "events.sqlite")

    async def run() -> None:
        writer = WriterProcess(path)
        await writer.start()  # before the first message
        started = writer.process
        assert started.poll() is None
        # bookkeeping yields to delivery: the writer runs at a lower priority than the engine
        assert os.getpriority(os.PRIO_PROCESS, started.pid) == os.getpriority(os.PRIO_PROCESS, 0) + NICE
        await writer.write([events.local(_job("m1"), "accepted", NOW)])
        assert writer.process is started
        # a result as the tracker hands it over: the row is built in the writer's process
        result = dumps(result_doc(_job("m1"), "delivered"))
        await writer.write([(events.SETTLED, NOW + 1, None, "m1", "a@x.test", "delivered", None, "bulk", result)])
        process = writer.process
        await writer.close()
        assert process.poll() is not None

    asyncio.run(run())
    assert [e["status"] for e in EventStore(path).by_id("m1")] == ["accepted", "delivered"]


class Failing:
    path = "nowhere"

    def __init__(self):
        self.fail, self.written = True, []

    async def write(self, rows, pending=None):
        if self.fail:
            raise OSError("disk full")
        self.written.extend(events.built(rows))


def test_a_batch_the_store_refuses_is_kept_and_tried_again(tmp_path, caplog) -> None:
    clock = SimpleNamespace(wall=lambda: now[0], sleep=asyncio.sleep)
    now = [NOW]
    tracker = Tracker(Tracking(), str(tmp_path / "e.sqlite"), clock)
    tracker.writer = failing = Failing()

    async def run() -> None:
        tracker.accepted(_job("m1"))
        with caplog.at_level(logging.WARNING, "mta.tracking"):
            await tracker.flush()
            tracker.accepted(_job("m2"))
            now[0] += 1
            await tracker.flush()  # within RETRY: not tried
            now[0] += 5
            await tracker.flush()  # tried again, fails again: said once only
        assert [r[1] for r in events.built(tracker.local)] == ["m1", "m2"] and failing.written == []
        failing.fail = False
        now[0] += 5
        await tracker.flush()
        assert [r[1] for r in failing.written] == ["m1", "m2"] and tracker.local == []

    asyncio.run(run())
    said = [r.getMessage() for r in caplog.records if "event store" in r.getMessage()]
    assert len(said) == 2 and "disk full" in said[0] and said[1].endswith("writing works again"), said


def test_messages_in_flight_reach_the_pending_table_only_when_silent_deferred_redelivered_or_stopping(tmp_path) -> None:
    from mta.tracking.tracker import InThread

    now = [NOW]
    clock = SimpleNamespace(wall=lambda: now[0], sleep=asyncio.sleep)
    path = str(tmp_path / "events.sqlite")
    tracker = Tracker(Tracking(stuck_after=60.0), path, clock)  # in memory for at most 30 s
    tracker.writer = InThread(EventStore(path))
    reader = EventStore(path)

    def pending() -> dict:
        return {r[0]: (r[1], r[2]) for r in reader.db.execute("SELECT id, status, first FROM pending")}

    async def run() -> None:
        for name in ("fast", "slow", "later"):
            tracker.accepted(_job(name))
        _settled(tracker, "fast", "delivered")
        await tracker.flush()
        assert pending() == {}  # in flight, in memory
        now[0] += 20
        _settled(tracker, "later", "deferred")  # back in the broker: the table has it
        tracker.accepted(_job("again"), redelivered=True)  # another process may have written it
        await tracker.flush()
        assert pending() == {"later": ("deferred", NOW), "again": ("accepted", NOW + 20)}
        now[0] += 11
        await tracker.flush()  # "slow" silent for 31 s
        assert pending() == {"later": ("deferred", NOW), "again": ("accepted", NOW + 20), "slow": ("accepted", NOW)}
        for name in ("slow", "later", "again"):
            _settled(tracker, name, "delivered")
        tracker.accepted(_job("last"))
        stop = asyncio.Event()
        stop.set()
        await tracker.run(stop)  # stopping: what is in flight goes to the table
        assert pending() == {"last": ("accepted", NOW + 31)}

    asyncio.run(run())
    assert [e["status"] for e in reader.by_id("fast")] == ["accepted", "delivered"]


def test_a_message_finished_within_a_second_is_one_row_and_reads_back_as_two_events(tmp_path) -> None:
    from mta.tracking.tracker import InThread

    now = [NOW]
    clock = SimpleNamespace(wall=lambda: now[0], sleep=asyncio.sleep)
    path = str(tmp_path / "events.sqlite")
    tracker = Tracker(Tracking(), path, clock)
    tracker.writer = InThread(EventStore(path))
    tagged = SimpleNamespace(**{**vars(_job("quick")), "tags": ("spring",), "doc": {"tags": ["spring"]},
                                "history": [{"phase": "data", "code": 250, "tls": True, "cipher": "TLS_AES_128"}]})

    async def run() -> None:
        tracker.accepted(tagged)
        tracker.accepted(_job("slow"))
        tracker.accepted(_job("retry"))
        now[0] += 0.5
        tracker.settled(tagged, "delivered", None, dumps(result_doc(tagged, "delivered")))
        _settled(tracker, "retry", "deferred")
        await tracker.flush()
        now[0] += 1
        await tracker.flush()  # "slow" has waited a second: its accepted event gets a row of its own
        _settled(tracker, "slow", "delivered")
        await tracker.flush()

    asyncio.run(run())
    store = EventStore(path)
    rows = {r[0]: r[1] for r in store.db.execute(f"SELECT id, COUNT(*) FROM events_{store.days()[0]} GROUP BY id")}
    assert rows == {"quick": 1, "slow": 2, "retry": 2}
    quick = store.by_id("quick")
    assert [(e["status"], e["time"], e["final"]) for e in quick] == [("accepted", NOW, 0), ("delivered", NOW + 0.5, 1)]
    assert quick[0]["tags"] == "spring" and quick[1]["detail"] == '{"tls":"TLS_AES_128"}'
    assert [e["id"] for e in store.by_tag("spring")] == ["quick", "quick"]
    assert [e["status"] for e in store.by_id("retry")] == ["accepted", "deferred"]
    assert [(e["status"], e["time"]) for e in store.by_id("slow")] == [("accepted", NOW), ("delivered", NOW + 1.5)]


def test_a_row_built_from_the_published_result_is_the_row_of_the_job() -> None:
    """The writer builds a final's row from the result as published: the same row the job
    itself gives, for an id beyond 64 bits, a bounce, a suppression and the session's TLS;
    and what the producer echoes in its own fields (a "bounce", a "suppression") is not
    taken for the engine's."""
    attempt = {"phase": "rcpt", "code": 550, "enhanced": "5.1.1", "description": "550 5.1.1 no such user",
               "mx": "mx.x.test", "ip": "192.0.2.1", "lane": "single", "tls": True, "cipher": "TLS_AES_256"}
    cases = [
        (dict(id=2**70, doc={"id": 2**70, "tags": ["a", "b"], "source": "shop"}, tags=("a", "b"), history=[attempt],
              attempts=1),
         "bounced", "hard"),
        (dict(id="s1", doc={"suppression": {"reason": "hard bounce"}}, history=[]), "suppressed", None),
        (dict(id="e1", doc={"bounce": "made up", "suppression": {"reason": "echoed"}}, history=[attempt] * 2,
              attempts=2), "expired", "soft"),
    ]
    for fields, status, bounce in cases:
        job = SimpleNamespace(**{**vars(_job("x")), **fields})
        result = dumps(result_doc(job, status, bounce))
        entry = (events.SETTLED, NOW, None, str(job.id), job.recipient.text, status, bounce, job.lane, result)
        assert events.built([entry]) == [events.from_job(job, status, bounce, NOW)], status


def test_a_writer_that_died_is_started_again_by_the_next_batch(tmp_path) -> None:
    path = str(tmp_path / "events.sqlite")

    async def run() -> None:
        writer = WriterProcess(path)
        await writer.start()
        first, socket = writer.process, writer.connection
        first.kill()
        first.wait()
        await writer.write([events.local(_job("m1"), "accepted", NOW)])
        assert writer.process is not first and writer.process.poll() is None
        assert socket.closed  # not one descriptor more for every child that died
        await writer.close()

    asyncio.run(run())
    assert [e["status"] for e in EventStore(path).by_id("m1")] == ["accepted"]


def test_a_result_the_writer_cannot_read_still_gives_its_event() -> None:
    """A result that is not the JSON it should be (a bug, a torn buffer) is no reason to
    refuse the whole batch, which the tracker would then offer again for ever."""
    entry = (events.SETTLED, NOW, NOW - 0.2, "m1", "a@x.test", "bounced", "hard", "single", b"\xff{not json")
    (row,) = events.built([entry])
    assert row[:7] == (NOW, "m1", "a@x.test", "bounced", 1, None, "single")
    assert events.is_merged(row) and '"bounce":"hard"' in row[15]


def test_a_writer_that_cannot_open_its_store_says_so_and_leaves_no_child(tmp_path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    writer = WriterProcess(str(blocked / "events.sqlite"))  # under a file: no directory can be made

    async def run() -> None:
        try:
            await writer.start()
        except RuntimeError as exc:
            return str(exc)

    said = asyncio.run(run())
    assert said and "did not start" in said, said
    assert writer.process.wait(10) is not None and writer.connection.closed
