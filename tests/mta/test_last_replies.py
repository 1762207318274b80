"""The last replies that were not 2xx (mta.ops.replies): ten per destination, newest first,
and a bounded number of destinations."""

import mta.ops.replies as replies_module
from mta.ops.replies import LastReplies


def test_ten_newest_first_and_the_least_recent_destination_forgotten(monkeypatch) -> None:
    monkeypatch.setattr(replies_module, "DESTINATIONS", 2)
    replies = LastReplies()
    for i in range(12):
        replies.note("domain:a.test", float(i), "rcpt", 451, f"try later {i}" + "x" * 1000, "mx.a.test", "192.0.2.1")
    got = replies.of("domain:a.test")
    assert [r["time"] for r in got] == [float(i) for i in range(11, 1, -1)]
    assert len(got[0]["text"]) == 512 and got[0]["mx"] == "mx.a.test"
    replies.note("domain:b.test", 20.0, "connect", None, "refused", None, None)
    replies.note("domain:a.test", 21.0, "rcpt", 450, "again", None, None)  # a: most recent again
    replies.note("domain:c.test", 22.0, "data", 554, "no", None, None)  # b forgotten
    assert replies.of("domain:b.test") == [] and replies.of("domain:a.test")[0]["text"] == "again"
