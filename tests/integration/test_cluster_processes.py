"""`mta run CONFIG --processes N`: N delivery processes, each a node of the store, started
and stopped as one; refused without a store."""

import subprocess
import sys
import time

import pytest
import redis

from tests.testbed.amqp import collect_results, make_message, publish
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.mtaproc import MtaProcess


@pytest.mark.timeout(120)
def test_two_processes_are_two_nodes_and_stop_together(vhost, sinks, mta_config, redis_url):
    config = mta_config(cluster={"store": redis_url, "node": "box"})
    parent = MtaProcess(config, args=["--processes", "2"], log_path=f"{config}.log")
    parent.start()
    try:
        parent.wait_ready(vhost, timeout=30, require_consumer=True)
        store = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(store.hkeys("mta:nodes")) < 2:
            time.sleep(0.1)
        assert sorted(store.hkeys("mta:nodes")) == [b"box-0", b"box-1"]
        run = run_id()
        msgs = {f"pr-{run}-{i}": f"user{i}-{run}@d{i % 10}.test" for i in range(100)}
        publish(vhost, "bulk", [make_message(i, r) for i, r in msgs.items()])
        assert_each_final(collect_results(vhost, msgs, timeout=60), msgs, "delivered")
        assert parent.terminate() == 0
        log = parent.log_text()
        assert "delivery process 0 started" in log and "delivery process 1 started" in log
        assert "[0] mta.engine: stopped" in log and "[1] mta.engine: stopped" in log
        assert store.hkeys("mta:nodes") == []  # both said goodbye
    finally:
        parent.terminate()


def test_several_processes_without_a_store_are_refused(mta_config):
    done = subprocess.run([sys.executable, "-m", "mta", "run", mta_config(), "--processes", "2"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "--processes 2 needs cluster.store" in done.stderr
