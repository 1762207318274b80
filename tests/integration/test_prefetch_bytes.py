"""broker.prefetch_bytes: a lane of big messages holds about that many octets unacknowledged
(the count prefetch alone would take all 40 at once), and all the mail is delivered."""

import re
import threading
import time

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.dns import bulk_ip
from tests.testbed.rabbit import vhost_of

LIMIT = 1_600_000
SIZE = 300_000  # over OFF_LOOP_BYTES: decoded in the intake thread


def _unacked(rabbit, vhost: str) -> int | None:
    cp = rabbit.ctl("list_queues", "-p", vhost_of(vhost), "--quiet", "--no-table-headers",
                    "name", "messages_unacknowledged", check=False)
    for line in cp.stdout.splitlines():
        name, _, count = line.rpartition("\t")
        if name == "mta.bulk" and count.strip().isdigit():
            return int(count)
    return None


@pytest.mark.timeout(180)
def test_big_mail_is_held_to_prefetch_bytes(rabbit, vhost, sinks, start_mta, mta_config):
    # a slow receiver: mail piles up in the MTA, for long enough (about 10 s) that the sampler,
    # a rabbitmqctl call of a second or two on a loaded machine, sees it several times
    sinks.set_data_delay(bulk_ip(81), 0.8)
    mta = start_mta(mta_config(broker={"prefetch": 1000, "prefetch_bytes": LIMIT}))
    run = run_id()
    msgs = {f"pb-{run}-{i}": f"user{i}-{run}@d81.test" for i in range(40)}
    bodies = [make_message(i, r, size=SIZE) for i, r in msgs.items()]
    body_size = max(len(b) for b in bodies)

    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:  # the broker's own count of what the MTA holds unacknowledged
        while not done.is_set():
            count = _unacked(rabbit, vhost)
            if count is not None:
                samples.append(count)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    publish(vhost, "bulk", bodies)
    results = ResultCollector(vhost).collect(list(msgs), timeout=150, settle=0.5)
    done.set()
    sampler.join(30)

    assert_each_final(results, msgs, "delivered")
    assert len(samples) >= 5 and max(samples) > 0, samples
    assert max(samples) * body_size <= LIMIT + body_size, (max(samples), samples)
    # the MTA's own account, written when it stops consuming
    mta.terminate(timeout=60)
    taken = [int(n) for n in re.findall(r"mta\.bulk: at most (\d+) octets taken", mta.log_text())]
    assert taken and max(taken) <= LIMIT + body_size, (taken, mta.log_tail())
    assert max(taken) > LIMIT // 2  # the bound was used, not just respected


@pytest.mark.timeout(120)
def test_prefetch_bytes_zero_is_counts_only(vhost, sinks, start_mta, mta_config):
    start_mta(mta_config(broker={"prefetch_bytes": 0}))
    run = run_id()
    msgs = {f"pz-{run}-{i}": f"user{i}-{run}@ok{1 + i % 3}.test" for i in range(20)}
    publish(vhost, "bulk", [make_message(i, r, size=SIZE if i.endswith("0") else 1024) for i, r in msgs.items()])
    results = ResultCollector(vhost).collect(list(msgs), timeout=60, settle=0.5)
    assert_each_final(results, msgs, "delivered")
