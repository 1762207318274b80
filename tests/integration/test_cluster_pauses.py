"""An operator's pause outlives the process: kept on disk beside the rules file without a
store, and in the shared store with one, so a node that was down when it was made holds
the mail when it starts (SPEC §6)."""

import subprocess
import sys
import time

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import assert_each_final, run_id


def mta_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mta", *args], capture_output=True, text=True, timeout=60)


def _wait_log(proc, text: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and text not in proc.log_text():
        time.sleep(0.1)
    assert text in proc.log_text(), proc.log_tail()


def _paused_holds(vhost, sinks) -> None:
    """ok2.test's mail is held (no attempt, no result, nothing at the sink) while ok1.test's
    is delivered."""
    run = run_id()
    paused = {f"p-{run}-{i}": f"user{i}-{run}@ok2.test" for i in range(5)}
    flowing = {f"f-{run}-{i}": f"user{i}-{run}@ok1.test" for i in range(5)}
    publish(vhost, "bulk", [make_message(i, r) for i, r in {**paused, **flowing}.items()])
    collector = ResultCollector(vhost)
    collector.collect(flowing, timeout=60, settle=2.0)
    assert_each_final(collector.by_id, flowing, "delivered")
    assert not any(i in sinks.count_by_id() for i in paused), "a paused domain got mail"
    assert not any(collector.by_id.get(i) for i in paused), "held mail published a result"


@pytest.mark.timeout(120)
def test_a_pause_outlives_a_restart_without_a_store(vhost, sinks, mta_config, start_mta):
    config = mta_config()
    first = start_mta(config)
    _wait_log(first, "consuming")
    done = mta_cli("pause", "ok2.test", "--config", config)
    assert "acknowledged by 1 MTA(s) of 1" in done.stdout, done.stdout + done.stderr
    assert first.terminate() == 0

    second = start_mta(config)
    _wait_log(second, "1 operator pause(s) in force from before: ok2.test")
    _paused_holds(vhost, sinks)


@pytest.mark.timeout(150)
def test_a_pause_made_while_a_node_was_down_holds_when_it_starts(vhost, sinks, mta_config, start_mta,
                                                                 redis_url):
    config_a = mta_config(name="a.yaml", cluster={"store": redis_url, "node": "a"})
    config_b = mta_config(name="b.yaml", cluster={"store": redis_url, "node": "b"})
    a = start_mta(config_a)
    _wait_log(a, "consuming")
    done = mta_cli("pause", "ok2.test", "--config", config_a)
    assert "acknowledged by 1 MTA(s) of 1" in done.stdout, done.stdout + done.stderr

    b = start_mta(config_b)  # never saw the command; its own file has no pauses
    _wait_log(b, "1 operator pause(s) in force from before: ok2.test")
    assert a.terminate() == 0  # only b consumes now
    _paused_holds(vhost, sinks)
    # and a resume on b reaches the store: a node started now has no pause
    done = mta_cli("resume", "ok2.test", "--config", config_b)
    assert "acknowledged by 1 MTA(s) of 1" in done.stdout, done.stdout + done.stderr
    c = start_mta(mta_config(name="c.yaml", cluster={"store": redis_url, "node": "c"}))
    _wait_log(c, "consuming")
    assert "operator pause(s) in force from before" not in c.log_text()
