"""`mta status DESTINATION` (SPEC §9) against a real MTA, broker and sinks: what a destination
answers now (its last replies that were not 2xx, with time and host), why its mail waits and
until when."""

import re
import subprocess
import sys

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import run_id
from tests.testbed.util import wait_for


def mta(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mta", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(180)
def test_a_destination_in_detail(vhost, sinks, mta_config, start_mta):
    config = mta_config(default={"retry_intervals": ["1s"], "max_age": "10m"})
    node = start_mta(config)
    run = run_id()
    publish(vhost, "single", [make_message(f"hard-{run}", f"hard-{run}@ok1.test"),
                              make_message(f"temp-{run}", f"temp-{run}@ok1.test")])
    ResultCollector(vhost).collect([f"hard-{run}"], timeout=30)
    wait_for(lambda: mta("status", "ok1.test", "--config", config).stdout.count(" 451 ") >= 2, 20,
             what="two deferrals of temp- shown")
    shown = mta("status", "ok1.test", "--config", config).stdout
    lines = shown.splitlines()
    assert lines[0].startswith("MTA ") and "destination " in lines[1] and "(serves ok1.test)" in lines[1], shown
    replies = lines[lines.index("    last replies that were not 2xx, newest first:") + 1:]
    assert all("mx.ok1.test [127." in r for r in replies), replies
    assert any(f" 550 5.1.1 <hard-{run}@ok1.test>" in r for r in replies), replies
    assert any(f" 451 4.3.0 <temp-{run}@ok1.test>" in r for r in replies), replies
    assert "connections " in shown and "per connection" in shown

    assert mta("pause", "ok2.test", "--for", "10m", "--config", config).returncode == 0
    wait_for(lambda: "pause ok2.test" in node.log_text(), 10, what="the pause")
    paused = mta("status", "ok2.test", "--config", config).stdout
    assert "paused: paused by operator (mta pause), until " in paused, paused
    assert 540 <= int(re.search(r"\(in (\d+)s\)", paused)[1]) <= 600, paused
    assert "no reply other than 2xx" in paused
    nothing = mta("status", f"nowhere-{run}.test", "--config", config)
    assert nothing.returncode == 0 and "no such destination here" in nothing.stdout, nothing.stdout
