"""The event store's writer process and the tracker's batches (SPEC §9): rows written by a
child process; a batch the store does not take is kept and tried again, said once."""

import asyncio
import logging
import os
from types import SimpleNamespace

from mta.config import Tracking
from mta.tracking import events
from mta.tracking.store import EventStore
from mta.tracking.tracker import Tracker
from mta.tracking.writer import NICE, WriterProcess

NOW = 1_795_856_400.0


def _job(message_id: str):
    return SimpleNamespace(id=message_id, recipient=SimpleNamespace(text="a@x.test"), attempts=0, lane="bulk",
                           tags=(), doc={}, history=[])


def test_the_writer_process_writes_and_stops(tmp_path) -> None:
    path = str(tmp_path / "events.sqlite")

    async def run() -> None:
        writer = WriterProcess(path)
        await writer.start()  # before the first message
        started = writer.process
        assert started.is_alive()
        # bookkeeping yields to delivery: the writer runs at a lower priority than the engine
        assert os.getpriority(os.PRIO_PROCESS, started.pid) == os.getpriority(os.PRIO_PROCESS, 0) + NICE
        await writer.write([events.local(_job("m1"), "accepted", NOW)])
        assert writer.process is started
        await writer.write([events.from_job(_job("m1"), "delivered", None, NOW + 1)])
        process = writer.process
        await writer.close()
        assert not process.is_alive()

    asyncio.run(run())
    assert [e["status"] for e in EventStore(path).by_id("m1")] == ["accepted", "delivered"]


class Failing:
    path = "nowhere"

    def __init__(self):
        self.fail, self.written = True, []

    async def write(self, rows, pending=None):
        if self.fail:
            raise OSError("disk full")
        self.written.extend(rows)


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
        assert [r[1] for r in tracker.local] == ["m1", "m2"] and failing.written == []
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
        tracker.settled(_job("fast"), "delivered", None)
        await tracker.flush()
        assert pending() == {}  # in flight, in memory
        now[0] += 20
        tracker.settled(_job("later"), "deferred", None)  # back in the broker: the table has it
        tracker.accepted(_job("again"), redelivered=True)  # another process may have written it
        await tracker.flush()
        assert pending() == {"later": ("deferred", NOW), "again": ("accepted", NOW + 20)}
        now[0] += 11
        await tracker.flush()  # "slow" silent for 31 s
        assert pending() == {"later": ("deferred", NOW), "again": ("accepted", NOW + 20), "slow": ("accepted", NOW)}
        for name in ("slow", "later", "again"):
            tracker.settled(_job(name), "delivered", None)
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
    tagged = SimpleNamespace(**{**vars(_job("quick")), "tags": ("spring",),
                                "history": [{"phase": "data", "code": 250, "tls": True, "cipher": "TLS_AES_128"}]})

    async def run() -> None:
        tracker.accepted(tagged)
        tracker.accepted(_job("slow"))
        tracker.accepted(_job("retry"))
        now[0] += 0.5
        tracker.settled(tagged, "delivered", None)
        tracker.settled(_job("retry"), "deferred", None)
        await tracker.flush()
        now[0] += 1
        await tracker.flush()  # "slow" has waited a second: its accepted event gets a row of its own
        tracker.settled(_job("slow"), "delivered", None)
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
