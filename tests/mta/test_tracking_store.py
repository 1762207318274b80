"""The event store (SPEC §9): rows from results and from the engine, one table per day,
lookups by id, recipient and tag, pending messages for `stuck`, retention by whole days."""

from types import SimpleNamespace

from mta.tracking import events
from mta.tracking.commands import render
from mta.tracking.store import DAY, EventStore, rows_by_day

T0 = 1_795_856_400.0  # 2026-11-28 09:00 UTC


def _job(message_id: str, recipient: str, tags=("news",)):
    return SimpleNamespace(id=message_id, recipient=SimpleNamespace(text=recipient), attempts=0, lane="bulk",
                           tags=tags, doc={"source": "shop"})


def _result(message_id: str, recipient: str, status: str, t: str, **extra) -> dict:
    return {"id": message_id, "recipient": recipient, "status": status, "final": status != "deferred",
            "attempts": 1, "tags": ["news"],
            "results": [{"time": t, "phase": "rcpt", "code": 550, "enhanced": "5.1.1", "description": "no such user",
                         "mx": "mx.example.org", "ip": "192.0.2.1", "lane": "bulk", "tls": True,
                         "cipher": "TLS_AES_256_GCM_SHA384"}], **extra}


def test_events_are_found_by_id_recipient_and_tag_across_days(tmp_path) -> None:
    store = EventStore(str(tmp_path / "events.sqlite"))
    store.write([events.local(_job("m1", "Jane@Example.ORG"), "accepted", T0)])
    store.write([events.from_result(_result("m1", "Jane@Example.ORG", "deferred", "2026-11-28T10:00:01Z"), T0),
                 events.from_result(_result("m1", "Jane@Example.ORG", "bounced", "2026-11-29T10:00:02.500Z",
                                            bounce="hard"), T0 + DAY)])
    assert len(store.days()) == 2
    assert [e["status"] for e in store.by_id("m1")] == ["accepted", "deferred", "bounced"]
    assert [e["status"] for e in store.by_recipient("Jane@example.org")] == ["accepted", "deferred", "bounced"]
    assert store.by_recipient("jane@example.org") == [], "local parts keep their case"
    assert [e["id"] for e in store.by_tag("news")] == ["m1"] * 3
    assert store.by_id("m1", since=T0 + DAY)[0]["status"] == "bounced"
    text = render(store.by_id("m1"))
    assert text.splitlines()[0] == "m1 -> Jane@example.org (lane bulk, tags news, source shop)"
    assert "bounced     attempt 1  rcpt  mx.example.org [192.0.2.1]  550 5.1.1 no such user  TLS TLS_AES_256_GCM_SHA384" \
        in text


def test_pending_messages_are_stuck_until_a_final_event(tmp_path) -> None:
    store = EventStore(str(tmp_path / "events.sqlite"))
    store.write([events.local(_job("a", "a@x.test"), "accepted", T0), events.local(_job("b", "b@x.test"), "accepted", T0)])
    store.write([events.local(_job("b", "b@x.test"), "held", T0 + 100, "not tried: paused")])
    assert [s["id"] for s in store.stuck(older=50, now=T0 + 120)] == ["a"]
    assert store.count_stuck(older=50, now=T0 + 200) == 2
    store.write([events.from_result(_result("a", "a@x.test", "delivered", "2026-11-28T10:00:00Z"), T0)])
    assert [s["id"] for s in store.stuck(older=50, now=T0 + 200)] == ["b"]
    # a final stored before the message's accepted event (another process's) still counts
    store.write([events.from_result(_result("c", "c@x.test", "delivered", "2026-11-28T10:00:00Z"), T0)])
    store.write([events.local(_job("c", "c@x.test"), "accepted", T0)])
    assert "c" not in [s["id"] for s in store.stuck(older=50, now=T0 + 200)]


def test_retention_drops_whole_days(tmp_path) -> None:
    store = EventStore(str(tmp_path / "events.sqlite"))
    for day in range(5):
        store.write([events.local(_job(f"m{day}", "a@x.test"), "accepted", T0 + day * DAY)])
    dropped = store.retain(keep=2 * DAY, now=T0 + 4 * DAY)
    assert len(dropped) == 2 and len(store.days()) == 3
    assert [e["id"] for e in store.by_recipient("a@x.test")] == ["m2", "m3", "m4"]


def test_a_result_with_odd_fields_is_still_a_row() -> None:
    row = events.from_result({"id": 9007199254740993, "status": "invalid", "final": True, "results": "junk",
                              "tags": "not a list", "recipient": None}, T0)
    assert row[:5] == (T0, "9007199254740993", None, "invalid", 1)


def test_a_batch_across_midnight_goes_to_both_days_with_recipients_normalized() -> None:
    midnight = T0 - T0 % DAY + DAY  # 2026-11-29 00:00 UTC
    def row(t, recipient):
        return (t, "m", recipient, "accepted", 0, 0, "bulk", None, None, None, None, None, None, None, None, None)
    rows = [row(midnight - 0.5, "Ann@Example.ORG."), row(midnight, "Ann@Example.ORG."), row(midnight - 0.1, "bo@x.org"),
            row(midnight + 1, None)]
    by_day = rows_by_day(rows)
    assert {day: [(r[0], r[2]) for r in day_rows] for day, day_rows in by_day.items()} == {
        "20261128": [(midnight - 0.5, "Ann@example.org"), (midnight - 0.1, "bo@x.org")],
        "20261129": [(midnight, "Ann@example.org"), (midnight + 1, None)]}
    assert by_day["20261128"][0][3:] == rows[0][3:]
