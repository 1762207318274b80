"""Reply patterns put destinations in backoff (a throttle) and paused (a suspend): `mta
status --json` shows each with the pattern that matched, since and until when, and the
reduced limits in force; the metrics endpoint shows the same states with their reasons and
counts the mail held back as throttled and paused, not tried."""

import json
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.testbed.amqp import make_message, publish
from tests.testbed.checks import run_id
from tests.testbed.util import free_port, wait_for


def mta_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mta", *args], capture_output=True, text=True, timeout=60)


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.timeout(180)
def test_status_and_metrics_show_backoff_and_suspension_with_their_patterns(vhost, sinks, mta_config, start_mta):
    sinks.add_rule("slowdown-", "421 4.7.0 Rate limit exceeded, slow down", times=1)
    sinks.add_rule("tss-", "421 4.7.0 [TSS04] Messages from 127.0.0.1 temporarily deferred", times=1)
    port = free_port()
    config = mta_config(
        metrics={"port": port, "address": "127.0.0.1"},
        default={"retry_intervals": ["1s"], "max_age": "10m"},
        patterns=[{"match": "TSS04", "action": "suspend", "duration": "10m"},
                  {"code": 421, "match": "(?i)rate limit", "action": "throttle", "duration": "10m",
                   "max_message_rate": "1/min", "connection_limit": 1}])
    mta = start_mta(config)
    run = run_id()
    publish(vhost, "bulk", [make_message(f"thr-{run}", f"slowdown-{run}@ok2.test"),
                            make_message(f"sus-{run}", f"tss-{run}@ok1.test")])
    wait_for(lambda: "normal -> backoff" in mta.log_text() and "normal -> paused" in mta.log_text(), 30,
             what="the throttle and the suspension")
    matched_at = time.time()
    publish(vhost, "bulk", [make_message(f"a-{run}-{i}", f"user{i}-{run}@ok2.test") for i in range(12)]
            + [make_message(f"b-{run}-{i}", f"user{i}-{run}@ok1.test") for i in range(5)])

    def held_enough():
        m = scrape(port)
        return (sum(v for (name, labels), v in m.items()
                    if name == "mta_not_tried_total" and ("reason", "paused") in labels) >= 5
                and sum(v for (name, labels), v in m.items()
                        if name == "mta_not_tried_total" and ("reason", "throttled") in labels) >= 1)
    wait_for(held_enough, 30, what="mail held as paused and throttled")

    done = mta_cli("status", "--json", "--config", config)
    assert done.returncode == 0, done.stderr
    (snap,) = json.loads(done.stdout)["mtas"]
    rows = {d["destination"]: d for d in snap["destinations"]}
    backoff, paused = rows["mx:mx.ok2.test"], rows["mx:mx.ok1.test"]
    assert backoff["state"] == "backoff" and "rate limit" in backoff["reason"].lower()
    assert abs(backoff["until"] - (matched_at + 600)) < 30 and backoff["since"] <= matched_at + 1
    assert backoff["limits"]["max_message_rate"] == "1/min" and backoff["limits"]["connection_limit"] == 1
    assert backoff["held"] >= 1
    assert paused["state"] == "paused" and "TSS04" in paused["reason"]
    assert abs(paused["until"] - (matched_at + 600)) < 30
    assert paused["in_flight"] == 0 and paused["held"] >= 5

    m = scrape(port)
    assert m[("mta_destination_state", (("destination", "mx:mx.ok2.test"), ("state", "backoff")))] == 1
    assert m[("mta_destination_state", (("destination", "mx:mx.ok1.test"), ("state", "paused")))] == 1
    infos = {labels: v for (name, labels), v in m.items() if name == "mta_destination_backoff_info"}
    assert len(infos) == 2 and all(abs(v - (matched_at + 600)) < 30 for v in infos.values())
    assert m[("mta_destinations", (("state", "backoff"),))] == 1
    assert m[("mta_destinations", (("state", "paused"),))] == 1
    assert m[("mta_destination_message_rate_limit", (("destination", "mx:mx.ok2.test"),))] == pytest.approx(1 / 60)
