"""The suppression list shared through PostgreSQL (`suppression.store`, SPEC §8), real
broker, sinks and database: what one node adds, another obeys (a new node copies the whole
list, a running one follows the feed, a returning one catches up); `mta suppress` works on
the shared list; while the database is away a node answers from its replica and keeps its
own additions until the database answers again."""

import asyncio
import subprocess
import sys
import time

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import run_id
from tests.testbed.postgres import PostgresServer
from tests.testbed.util import wait_for


@pytest.fixture
def database():
    server = PostgresServer()
    server.start()
    yield server
    server.remove()


def _suppress(config: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mta", "suppress", *args, "-c", config],
                          capture_output=True, text=True, timeout=60)


async def _forget_all_but_the_last_change(url: str) -> None:
    import asyncpg

    db = await asyncpg.connect(url)
    await db.execute("DELETE FROM mta_suppression_changes WHERE seq < (SELECT MAX(seq) FROM mta_suppression_changes)")
    await db.close()


def _final(results: ResultCollector, vhost: str, msg_id: str, recipient: str) -> dict:
    publish(vhost, "single", [make_message(msg_id, recipient)])
    results.collect([msg_id], timeout=60)
    [final] = results.finals(msg_id)
    return final


@pytest.mark.timeout(300)
def test_nodes_share_one_list(vhost, sinks, mta_config, start_mta, database):
    run = run_id()
    shared = {"suppression": {"store": database.url}}
    config_a = mta_config(name="a.yaml", **shared)
    config_b = mta_config(name="b.yaml", **shared)
    results = ResultCollector(vhost)
    hard, other, later = f"hard-{run}@ok1.test", f"other-{run}@ok1.test", f"later-{run}@ok1.test"

    # node A: a hard bounce goes into the shared list
    node_a = start_mta(config_a)
    assert _final(results, vhost, f"a1-{run}", hard)["status"] == "bounced"
    wait_for(lambda: "hard_bounce" in _suppress(config_b, "check", hard).stdout, timeout=15)
    node_a.terminate()

    # node B, new (no replica): copies the list at start and obeys it
    node_b = start_mta(config_b)
    final = _final(results, vhost, f"b1-{run}", hard)
    assert final["status"] == "suppressed" and final["suppression"]["message_id"] == f"a1-{run}", final
    # the operator adds and removes on the shared list; the running node follows within seconds
    assert _suppress(config_a, "add", later).returncode == 0
    assert _suppress(config_a, "remove", hard, "--why", "mailbox fixed").returncode == 0
    time.sleep(2.5)  # the feed is read every second
    assert _final(results, vhost, f"b2-{run}", later)["status"] == "suppressed"
    assert _final(results, vhost, f"b3-{run}", hard)["status"] == "bounced", "removed: tried again (and bounced)"

    # the database goes away: B answers from its replica and keeps its additions
    database.stop()
    assert _final(results, vhost, f"b4-{run}", later)["status"] == "suppressed"
    assert _final(results, vhost, f"b5-{run}", f"hard-{run}-2@ok1.test")["status"] == "bounced"
    assert _suppress(config_b, "check", later).returncode != 0  # the CLI has no replica
    database.start()
    wait_for(lambda: "hard_bounce" in _suppress(config_a, "check", f"hard-{run}-2@ok1.test").stdout, timeout=30)
    node_b.terminate()

    # node A returns with its old replica and catches up with the feed
    node_a = start_mta(config_a)
    assert _final(results, vhost, f"a2-{run}", later)["status"] == "suppressed"
    assert _final(results, vhost, f"a3-{run}", f"hard-{run}-2@ok1.test")["status"] == "suppressed"
    assert _final(results, vhost, f"a4-{run}", other)["status"] == "delivered"
    node_a.terminate()

    # away for longer than the feed keeps (a day, here its rows deleted): A copies the list again
    for n in (1, 2):
        assert _suppress(config_b, "add", f"away-{n}-{run}@ok1.test").returncode == 0
    asyncio.run(_forget_all_but_the_last_change(database.url))
    start_mta(config_a)
    assert _final(results, vhost, f"a5-{run}", f"away-1-{run}@ok1.test")["status"] == "suppressed"
    assert _final(results, vhost, f"a6-{run}", later)["status"] == "suppressed"
    # the removal is audited; b3's bounce put the address back, naming b3
    checked = _suppress(config_a, "check", hard)
    assert checked.returncode == 0 and f"message b3-{run}" in checked.stdout, checked.stdout
