"""`mta reload` and SIGHUP apply new rules to live destinations without dropping mail in
flight; a bad rules file is refused with every problem and the old rules stay."""

import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.dns import OK_MX


def wait_for(mta, text, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and text not in mta.log_text():
        time.sleep(0.1)
    return text in mta.log_text()


def rewrite(path, change):
    with open(path) as fh:
        doc = yaml.safe_load(fh)
    change(doc)
    with open(path, "w") as fh:
        yaml.safe_dump(doc, fh)


@pytest.mark.timeout(240)
def test_reload_raises_a_live_limit_and_refuses_a_bad_file(vhost, sinks, mta_config, start_mta):
    sink = OK_MX[1]
    sinks.set_data_delay(sink, 0.1)
    path = mta_config(domains={"ok1.test": {"connection_limit": 1, "max_deliveries_per_connection": 5}})
    mta = start_mta(path)
    run = run_id()
    first = {f"a-{run}-{i}": f"a{i}-{run}@ok1.test" for i in range(60)}
    publish(vhost, "bulk", [make_message(i, r) for i, r in first.items()])
    assert sinks.wait_accepted(5, 30)
    assert sinks.max_concurrent()[sink] == 1

    # A bad file: refused, every problem named, the old limit still holds.
    original = open(path).read()
    rewrite(path, lambda d: d["domains"]["ok1.test"].update(connection_limit=0, max_message_rate="fast"))
    mta.signal(signal.SIGHUP)
    assert wait_for(mta, "reload of")
    log = mta.log_text()
    assert "refused, the old rules stay in force" in log
    assert "domains.ok1.test.connection_limit" in log and "domains.ok1.test.max_message_rate" in log

    # A good file through `mta reload`: three connections from now on, nothing lost.
    with open(path, "w") as fh:
        fh.write(original)
    rewrite(path, lambda d: d["domains"]["ok1.test"].update(connection_limit=3))
    done = subprocess.run([sys.executable, "-m", "mta", "reload", "--config", path],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert wait_for(mta, "reloaded")
    second = {f"b-{run}-{i}": f"b{i}-{run}@ok1.test" for i in range(120)}
    publish(vhost, "bulk", [make_message(i, r) for i, r in second.items()])

    collector = ResultCollector(vhost)
    collector.collect({**first, **second}, timeout=150, settle=0.5)
    by_id = assert_each_final(collector.by_id, {**first, **second}, "delivered")
    assert all(r["attempts"] == 1 for r in by_id.values())
    counts = sinks.count_by_id()
    assert all(counts.get(i) == 1 for i in {**first, **second})
    assert sinks.max_concurrent()[sink] == 3
