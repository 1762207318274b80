"""The suppression list at work (SPEC §8), real broker and sinks: a hard bounce puts the
recipient on it and the next message to it gets one `suppressed` result with no RCPT at the
receiver; a soft bounce, a 4xx and an expiry never do; `mta suppress` adds and removes
while the MTA runs (removal: the address is tried again); scopes."""

import subprocess
import sys
import time

import pytest

from tests.testbed.amqp import collect_results, make_message, publish
from tests.testbed.checks import run_id
from tests.testbed.util import wait_for


def _suppress(config: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mta", "suppress", *args, "-c", config],
                          capture_output=True, text=True, timeout=60)


def _send(vhost, lane: str, messages: dict, **extra) -> dict:
    publish(vhost, lane, [make_message(i, r, **extra) for i, r in messages.items()])
    return collect_results(vhost, list(messages), timeout=60, settle=0.5)


def _final(results: dict, msg_id: str) -> dict:
    finals = [r for r in results[msg_id] if r.get("final")]
    assert len(finals) == 1, results[msg_id]
    return finals[0]


@pytest.mark.timeout(180)
def test_hard_bounces_suppress_and_nothing_else_does(vhost, sinks, mta_config, start_mta):
    config = mta_config(default={"retry_intervals": ["1s"], "max_age": "3s"})
    start_mta(config)
    run = run_id()
    first = {f"h-{run}": f"hard-{run}@ok1.test", f"f-{run}": f"full-{run}@ok1.test",
             f"t-{run}": f"temp-{run}@ok1.test", f"ok-{run}": f"fine-{run}@ok1.test"}
    results = _send(vhost, "bulk", first)
    assert [_final(results, i)["status"] for i in first] == ["bounced", "bounced", "expired", "delivered"]
    wait_for(lambda: f"hard-{run}@ok1.test" in _suppress(config, "check", f"hard-{run}@ok1.test").stdout,
             timeout=10)  # written to the store within a second or two

    rcpts_before = sinks.rcpt_attempts()
    again = {f"{i}-2": r for i, r in first.items()}
    results = _send(vhost, "bulk", again)
    hard = _final(results, f"h-{run}-2")
    assert hard["status"] == "suppressed" and hard["attempts"] == 0, hard
    assert hard["suppression"]["reason"] == "hard_bounce" and hard["suppression"]["message_id"] == f"h-{run}"
    assert sinks.rcpt_attempts().get(f"hard-{run}@ok1.test") == rcpts_before.get(f"hard-{run}@ok1.test"), \
        "no RCPT for a suppressed recipient"
    assert [_final(results, f"{i}-2")["status"] for i in (f"f-{run}", f"t-{run}", f"ok-{run}")] == \
        ["bounced", "expired", "delivered"], "a soft bounce, a 4xx and an expiry suppress nothing"

    removed = _suppress(config, "remove", f"hard-{run}@ok1.test", "--why", "the customer fixed the mailbox")
    assert removed.returncode == 0, removed.stderr
    time.sleep(2.5)  # the running MTA reads the store's changes every second
    results = _send(vhost, "bulk", {f"h-{run}-3": f"hard-{run}@ok1.test"})
    assert _final(results, f"h-{run}-3")["status"] == "bounced", "removed: tried again"


@pytest.mark.timeout(120)
def test_entries_added_while_running_and_their_scopes(vhost, sinks, mta_config, start_mta):
    config = mta_config()
    start_mta(config)
    run = run_id()
    assert _suppress(config, "add", f"global-{run}@ok2.test").returncode == 0
    assert _suppress(config, "add", f"scoped-{run}@ok2.test", "--scope", "sender_domain:other.test",
                     "--reason", "complaint").returncode == 0
    time.sleep(2.5)
    messages = {f"g-{run}": f"global-{run}@ok2.test", f"s-{run}": f"scoped-{run}@ok2.test"}
    results = _send(vhost, "single", messages)  # envelope sender@sender.test: not other.test
    assert _final(results, f"g-{run}")["status"] == "suppressed"
    assert _final(results, f"s-{run}")["status"] == "delivered", "another sender domain's entry does not apply"
    results = _send(vhost, "single", {f"s2-{run}": f"scoped-{run}@ok2.test"}, envelope="news@other.test")
    final = _final(results, f"s2-{run}")
    assert final["status"] == "suppressed" and final["suppression"]["reason"] == "complaint", final
