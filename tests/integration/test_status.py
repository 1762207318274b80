"""`mta status --json` answers for every MTA on the broker: lane depths and consumers, and
each active destination with its mode and why, limits in force, in-flight and held mail;
a paused domain and a throttled (rate-limited, holding) destination are shown as such."""

import json
import subprocess
import sys
import time

import pytest

from tests.testbed.amqp import make_message, publish, queue_info
from tests.testbed.checks import run_id
from tests.testbed.util import wait_for


def mta_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mta", *args], capture_output=True, text=True, timeout=60)


def status(config: str) -> dict:
    done = mta_cli("status", "--json", "--config", config)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.timeout(180)
def test_status_shows_paused_and_throttled_destinations_of_every_mta(vhost, sinks, mta_config, start_mta):
    config = mta_config(domains={"ok2.test": {"max_message_rate": "1/s", "connection_limit": 1}})
    mtas = [start_mta(config), start_mta(config)]
    wait_for(lambda: all("consuming" in m.log_text() for m in mtas), 30, what="both MTAs consuming")
    done = mta_cli("pause", "ok3.test", "--for", "10m", "--config", config)
    assert done.returncode == 0, done.stderr
    paused_at = time.time()
    wait_for(lambda: all("pause ok3.test" in m.log_text() for m in mtas), 10, what="the pause in both MTAs")

    run = run_id()
    publish(vhost, "bulk", [make_message(f"s-{i}-{run}", f"user{i}-{run}@ok2.test") for i in range(60)]
            + [make_message(f"p-{i}-{run}", f"user{i}-{run}@ok3.test") for i in range(4)])
    wait_for(lambda: sinks.accepted_count() >= 2, 30, what="the throttled destination sending")
    wait_for(lambda: queue_info(vhost, "mta.results")["messages"] >= 2, 30, what="two results published")

    report = status(config)
    assert report["queues"]["mta.bulk"]["consumers"] == 2
    assert report["queues"]["mta.single"]["consumers"] == 2
    # nobody consumes the results queue here: it holds every result published so far
    assert report["queues"]["mta.results"]["consumers"] == 0
    assert report["queues"]["mta.results"]["depth"] >= 2
    assert len(report["mtas"]) == 2, [m["instance"] for m in report["mtas"]]
    assert len({m["instance"] for m in report["mtas"]}) == 2

    for mta in report["mtas"]:
        rows = {d["destination"]: d for d in mta["destinations"]}
        paused = rows["ok3.test"]
        assert paused["state"] == "paused" and "pause" in paused["reason"]
        assert abs(paused["until"] - (paused_at + 600)) < 30

    # The rate-limited destination: each MTA that got its mail shows the limits in force,
    # mail in flight or queued, and what it held beyond its allowance (10 s at 1/s).
    assert sum(m["counts"]["consumed"] for m in report["mtas"]) >= 64

    throttled = [d for m in report["mtas"] for d in m["destinations"] if d["destination"] == "domain:ok2.test"]
    assert throttled, "no MTA shows the throttled destination"
    for row in throttled:
        assert row["state"] == "normal"
        assert row["limits"]["max_message_rate"] == "1/s"
        assert row["limits"]["connection_limit"] == 1
        assert row["connections"] <= 1 and row["in_flight"] <= 1
        assert row["queued"] <= 10
        assert "domains.ok2.test" in row["rules"]
    assert sum(row["held"] for row in throttled) >= 60 - 2 * 14, "mail beyond the allowance was not held"
    assert sum(row["queued"] + row["in_flight"] for row in throttled) >= 1
    held = sum(m["lanes"]["bulk"].get("not_tried", 0) for m in report["mtas"])
    assert held >= sum(row["held"] for row in throttled) + 4  # the paused domain's four too
    assert sum(m["last_minute"]["bulk"].get("not_tried", 0) for m in report["mtas"]) == held  # all within a minute
    assert sum(m["last_minute"]["all"]["delivered"] for m in report["mtas"]) >= 2

    # the human form says the same
    text = mta_cli("status", "--config", config)
    assert text.returncode == 0, text.stderr
    assert "ok3.test  paused: paused by operator" in text.stdout
    assert "domain:ok2.test  normal" in text.stdout and "1/s messages" in text.stdout
    assert text.stdout.count("MTA ") == 2 and "2 MTAs, together in the last 60 s:" in text.stdout
