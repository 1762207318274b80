"""`mta pause DOMAIN` holds that domain's mail in every running MTA (no attempt, no result)
while other domains flow; `mta resume DOMAIN` lets it through, each message delivered once."""

import subprocess
import sys
import time

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import assert_each_final, run_id


def mta_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mta", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(180)
def test_pause_holds_domain_and_resume_delivers(vhost, sinks, mta_config, start_mta):
    config = mta_config()
    first, second = start_mta(config), start_mta(config)  # the command must reach both
    deadline = time.monotonic() + 30
    # Pauses live in running processes: wait until both listen for control messages.
    while time.monotonic() < deadline and not all("consuming" in m.log_text() for m in (first, second)):
        time.sleep(0.2)

    done = mta_cli("pause", "ok2.test", "--config", config)
    assert done.returncode == 0, done.stderr
    assert "pause ok2.test: acknowledged by 2 MTA(s) of 2" in done.stdout
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all("pause ok2.test" in m.log_text() for m in (first, second)):
        time.sleep(0.2)
    assert all("pause ok2.test" in m.log_text() for m in (first, second))

    run = run_id()
    paused = {f"p-{run}-{i}": f"user{i}-{run}@ok2.test" for i in range(10)}
    flowing = {f"f-{run}-{i}": f"user{i}-{run}@ok1.test" for i in range(10)}
    publish(vhost, "bulk", [make_message(i, r) for i, r in {**paused, **flowing}.items()])

    collector = ResultCollector(vhost)
    collector.collect(flowing, timeout=60, settle=3.0)
    assert_each_final(collector.by_id, flowing, "delivered")
    assert not any(i in sinks.count_by_id() for i in paused), "a paused domain got mail"
    assert not any(collector.by_id.get(i) for i in paused), "held mail published a result"

    done = mta_cli("resume", "ok2.test", "--config", config)
    assert done.returncode == 0, done.stderr
    assert "resume ok2.test: acknowledged by 2 MTA(s) of 2" in done.stdout
    collector.collect(paused, timeout=90, settle=0.5)
    by_id = assert_each_final(collector.by_id, paused, "delivered")
    assert all(r["attempts"] == 1 for r in by_id.values()), "a pause must not count attempts"
    counts = sinks.count_by_id()
    assert {i: counts.get(i) for i in paused} == {i: 1 for i in paused}
