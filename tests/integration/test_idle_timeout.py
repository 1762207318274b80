"""idle_timeout: a connection with nothing to send is closed once its idle time runs out,
and not before mail stops coming."""

from __future__ import annotations

import time

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.dns import bulk_ip


@pytest.mark.timeout(90)
def test_idle_connections_close_after_idle_timeout(vhost, sinks, start_mta, mta_config):
    ip = bulk_ip(83)
    start_mta(mta_config(domains={"d83.test": {"connection_limit": 3, "idle_timeout": "2s"}}))
    run = run_id()
    coll = ResultCollector(vhost)
    ids = []
    for wave in range(3):  # waves closer together than idle_timeout: the sessions stay
        msgs = {f"idle-{run}-{wave}-{n}": f"user{n}-{run}@d83.test" for n in range(6)}
        publish(vhost, "bulk", [make_message(i, r) for i, r in msgs.items()])
        coll.collect(list(msgs), timeout=30, settle=0.1)
        ids += list(msgs)
        assert sinks.current_sessions().get(ip, 0) >= 1
        time.sleep(0.5)
    assert_each_final(coll.by_id, ids, "delivered")
    opened = sinks.connections()[ip]
    assert opened <= 3, f"{opened} connections for waves within the idle timeout"

    deadline = time.monotonic() + 20
    while sinks.current_sessions().get(ip, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    closed = time.time()
    assert not sinks.current_sessions().get(ip, 0), "idle connections were never closed"
    last = max(a.time for a in sinks.accepted() if a.sink == ip)
    # a worker starts its idle wait after the receiver's last 250: never closed sooner
    assert closed - last >= 1.9, f"closed {closed - last:.2f}s after the last message, before its idle_timeout"
