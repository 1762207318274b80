"""Where is my message (SPEC §9), real broker, sinks and (or) PostgreSQL: `mta trace` shows each step of a
delivered, a bounced, a deferred-then-delivered, a paused-then-delivered and a suppressed
message, by id, recipient and tag; `mta stuck` and `mta_stuck_messages` show a message
accepted and silent (a paused destination) until it moves."""

import re
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import run_id
from tests.testbed.postgres import PostgresServer
from tests.testbed.util import free_port, wait_for


def mta(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mta", *args], capture_output=True, text=True, timeout=60)


def statuses(trace_output: str, message_id: str) -> list[str]:
    """The status column of one message's lines in `mta trace` output."""
    lines = trace_output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{message_id} -> "))
    out = []
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        out.append(line.split()[2])
    return out


def stuck_gauge(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return float(re.search(r"^mta_stuck_messages (\S+)$", text, re.M)[1])


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request):
    """Where the events go: the SQLite file beside the rules (the default), or PostgreSQL."""
    if request.param == "sqlite":
        yield {}
        return
    server = PostgresServer()
    server.start()
    yield {"store": server.url}
    server.remove()


@pytest.mark.timeout(240)
def test_trace_and_stuck(vhost, sinks, mta_config, start_mta, store):
    port = free_port()
    config = mta_config(default={"retry_intervals": ["1s"], "max_age": "10m"}, metrics={"port": port},
                        tracking={"stuck_after": "2s", **store})
    node = start_mta(config)
    run = run_id()
    assert mta("pause", "ok2.test", "--config", config).returncode == 0
    wait_for(lambda: "pause ok2.test" in node.log_text(), 10, what="the pause")
    messages = {f"ok-{run}": f"user-{run}@ok1.test", f"hard-{run}": f"hard-{run}@ok1.test",
                f"temp2-{run}": f"temp2-{run}@ok1.test", f"paused-{run}": f"user-{run}@ok2.test"}
    publish(vhost, "single", [make_message(i, r, tags=["shop", f"run-{run}"]) for i, r in messages.items()])
    results = ResultCollector(vhost)
    results.collect([i for i in messages if not i.startswith("paused")], timeout=60)

    # the paused message: accepted, held, silent past stuck_after: in `mta stuck` and the gauge
    wait_for(lambda: f"paused-{run}" in mta("stuck", "-c", config).stdout, 20, what="the paused message stuck")
    wait_for(lambda: stuck_gauge(port) >= 1, 20, what="mta_stuck_messages")
    stuck = mta("stuck", "-c", config)
    assert stuck.returncode == 1 and f"paused-{run} -> user-{run}@ok2.test: held" in stuck.stdout, stuck.stdout
    assert f"ok-{run}" not in stuck.stdout

    assert mta("resume", "ok2.test", "--config", config).returncode == 0
    results.collect(messages, timeout=60)
    suppressed = f"again-{run}"
    publish(vhost, "single", [make_message(suppressed, f"hard-{run}@ok1.test")])
    results.collect([suppressed], timeout=30)
    wait_for(lambda: f"paused-{run}" not in mta("stuck", "-c", config, "--older", "0s").stdout, 10,
             what="the paused message no longer stuck")

    def traced(target: str, *extra: str) -> str:
        done = mta("trace", target, "-c", config, *extra)
        assert done.returncode == 0, done.stderr
        return done.stdout

    wait_for(lambda: "delivered" in mta("trace", f"paused-{run}", "-c", config).stdout, 10, what="events stored")
    assert statuses(traced(f"ok-{run}"), f"ok-{run}") == ["accepted", "delivered"]
    assert statuses(traced(f"hard-{run}"), f"hard-{run}") == ["accepted", "bounced"]
    assert statuses(traced(f"temp2-{run}"), f"temp2-{run}") == ["accepted", "deferred", "deferred", "delivered"]
    paused = statuses(traced(f"paused-{run}"), f"paused-{run}")
    assert paused[0] == "accepted" and paused[-1] == "delivered" and set(paused[1:-1]) == {"held"}, paused
    assert statuses(traced(suppressed), suppressed) == ["accepted", "suppressed"]

    delivered = traced(f"ok-{run}")
    assert f"ok-{run} -> user-{run}@ok1.test (lane single, tags shop,run-{run})" in delivered, delivered
    assert re.search(r"delivered\s+attempt 1\s+\w+\s+\S+ \[127\.\d+\.\d+\.\d+\]\s+250", delivered), delivered
    assert "paused" in traced(f"paused-{run}").split("held", 1)[1].splitlines()[0]
    bounced = traced(f"hard-{run}@OK1.TEST")  # by recipient, the domain in any case
    assert statuses(bounced, f"hard-{run}") == ["accepted", "bounced"]
    assert statuses(bounced, suppressed) == ["accepted", "suppressed"]
    assert "5.1.1" in bounced and "on the suppression list (hard_bounce" in bounced
    tagged = mta("trace", "-c", config, "--tag", f"run-{run}").stdout
    assert {line.split(" -> ")[0] for line in tagged.splitlines() if " -> " in line} == set(messages)
    assert mta("trace", f"nothing-{run}", "-c", config).returncode == 1
