"""The broker closes the MTA's consuming connection mid-run (`rabbitmqctl close_connection`,
as an operator or a failover would) while mail is on the wire, deferred and held.

The broker requeues every unacknowledged delivery and gives it out again; the MTA starts a
new session. Nothing may be published for the old deliveries besides a remembered final
outcome: a retry or held copy beside the redelivered original would be two live copies of
one message. Ledger: every message exactly one final result; sink duplicates within the
SMTP sessions open at the close (transactions whose outcome the MTA learns only after its
channel is gone, whose redelivered copy may already be on its way).
"""

from __future__ import annotations

import time

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import run_id
from tests.testbed.ledger import Ledger

SLOW = [f"d{n}.test" for n in range(60, 64)]       # delivered after 0.5 s in DATA
SLOW_SINKS = [f"127.0.2.{n + 1}" for n in range(60, 64)]
TEMP = [f"d{n}.test" for n in range(64, 66)]       # every reply 0.2 s late, 450 to soft- twice
TEMP_SINKS = [f"127.0.2.{n + 1}" for n in range(64, 66)]
HELD = "d66.test"                                 # 4 messages/s: most of its mail is held


def _consuming_connection(rabbit, vhost_url: str) -> str:
    """The pid (as close_connection takes it) of the MTA's consuming connection."""
    vhost = vhost_url.rsplit("/", 1)[1]
    out = rabbit.ctl("-q", "list_connections", "pid", "vhost", "client_properties").stdout
    for line in out.splitlines():
        pid, _, rest = line.partition("\t")
        if rest.startswith(vhost + "\t") and "mta consume" in rest:
            return pid
    raise AssertionError(f"no consuming connection of the MTA in {vhost}: {out}")


def _close_mid_run(n_msgs, rabbit, vhost, sinks, start_mta, mta_config):
    for addr in SLOW_SINKS:
        sinks.set_data_delay(addr, 0.5)
    for addr in TEMP_SINKS:
        sinks.set_reply_delay(addr, 0.2)
    sinks.add_rule("soft-", "450 4.2.1 <{rcpt}>: mailbox unavailable", times=2)  # no rate-limit words
    cfg = mta_config(broker={"prefetch": 300},
                     default={"connection_limit": 4, "retry_intervals": ["1s"], "max_age": "120s"},
                     domains={HELD: {"max_message_rate": "4/s", "connection_limit": 1}})
    mta = start_mta(cfg)
    run = run_id()
    msgs = {}
    for i in range(n_msgs):
        kind = i % 4
        if kind < 2:
            msgs[f"cl-{run}-{i}"] = f"user{i}-{run}@{SLOW[i % len(SLOW)]}"
        elif kind == 2:
            msgs[f"cl-{run}-{i}"] = f"soft-{i}-{run}@{TEMP[i % len(TEMP)]}"
        else:
            msgs[f"cl-{run}-{i}"] = f"user{i}-{run}@{HELD}"
    ledger = Ledger("consuming connection closed", bound=0)
    ledger.add(msgs)
    publish(vhost, "bulk", [make_message(i, r) for i, r in msgs.items()])

    assert sinks.wait_accepted(20, timeout=60), "nothing delivered before the close"
    time.sleep(0.3)  # deferrals of the first 451s under way
    open_at_close = sum(sinks.current_sessions().values())
    rabbit.ctl("close_connection", _consuming_connection(rabbit, vhost), "test: consumer connection closed")

    collector = ResultCollector(vhost)
    collector.collect(msgs, timeout=180, settle=2.0)
    assert mta.alive(), "the MTA rides out a closed connection"
    assert "lost the broker" in mta.log_text()
    figures = ledger.check(collector.by_id, sinks.count_by_id(), sink_duplicates_allowed=open_at_close)
    print(f"closed consuming connection: sink duplicates {figures.sink_duplicates}, "
          f"sessions open at the close {open_at_close}")


@pytest.mark.timeout(240)
def test_closed_consuming_connection_leaves_one_live_copy(rabbit, vhost, sinks, start_mta, mta_config):
    _close_mid_run(120, rabbit, vhost, sinks, start_mta, mta_config)


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_closed_consuming_connection_leaves_one_live_copy_full(rabbit, vhost, sinks, start_mta, mta_config):
    _close_mid_run(240, rabbit, vhost, sinks, start_mta, mta_config)
