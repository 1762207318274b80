"""Scenario 4 of the fault suite: receivers that misbehave, while others keep their pace.

One destination each: drops the connection in DATA (no reply), hangs up after the banner,
never answers (tarpit), answers 421 to every connection for a while then recovers, and
answers every command after a delay (5 s; 2 s in CI). Meanwhile 13 healthy destinations get the same batch
that was timed alone first: they must finish within 3 times that (and never worse than
the baseline plus 10 s), while every misbehaving message ends in one final result
(`expired` for the three that never accept, `delivered` for the others).

CI: the 421 phase lasts 10 s and the slow receiver answers after 2 s; slow: 30 s and 5 s,
and 1,000 healthy messages.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import run_id
from tests.testbed.dns import bulk_ip
from tests.testbed.ledger import Ledger

HEALTHY = [f"ok{n}.test" for n in (1, 2, 3)] + [f"d{n}.test" for n in range(60, 70)]
BAD = {  # domain: (misbehaviour, final status its mail must end in)
    "d50.test": ("drop", "expired"),
    "d51.test": ("hangup", "expired"),
    "d52.test": ("tarpit", "expired"),
    "d53.test": ("421", "delivered"),
    "d54.test": ("slow", "delivered"),
}
PER_BAD = 5


def _healthy_batch(tag: str, n: int) -> dict:
    run = run_id()
    return {f"{tag}-{run}-{i}": f"user{i}-{run}@{HEALTHY[i % len(HEALTHY)]}" for i in range(n)}


def _timed(vhost, collector, msgs) -> float:
    t0 = time.monotonic()
    publish(vhost, "bulk", [make_message(i, r) for i, r in msgs.items()])
    collector.collect(msgs, timeout=120, settle=0.2)
    missing = collector.missing_final(msgs)
    assert not missing, f"{len(missing)} healthy messages without a final result"
    return time.monotonic() - t0


def _misbehaving_sinks(n_healthy, outage, reply_delay, vhost, sinks, start_mta, mta_config):
    fast_fail = {"connect_timeout": "2s", "ehlo_timeout": "2s", "data_timeout": "3s",
                 "data_dot_timeout": "3s"}
    cfg = mta_config(default={"max_age": "180s", "connection_limit": 5},
                     domains={"d50.test": fast_fail, "d51.test": fast_fail, "d52.test": fast_fail})
    start_mta(cfg)
    collector = ResultCollector(vhost)
    ledger = Ledger(f"misbehaving sinks (421 for {outage}s, {n_healthy} healthy)", bound=0)

    baseline_msgs = _healthy_batch("base", n_healthy)
    ledger.add(baseline_msgs)
    baseline = _timed(vhost, collector, baseline_msgs)

    for domain, (manner, _) in BAD.items():
        ip = bulk_ip(int(domain[1:3]))
        if manner in ("tarpit", "hangup"):
            sinks.set_manner(ip, manner)
        elif manner == "421":
            sinks.set_greeting(ip, "421 4.3.2 Service not available, closing transmission channel")
        elif manner == "slow":
            sinks.set_reply_delay(ip, reply_delay)
    run = run_id()
    bad_docs = []
    for domain, (manner, status) in BAD.items():
        ids = []
        for k in range(PER_BAD):
            msg_id = f"bad-{manner}-{run}-{k}"
            local = f"drop-{k}-{run}" if manner == "drop" else f"user{k}-{run}"
            extra = {"maxdelivertime": 10} if status == "expired" else {}
            bad_docs.append(make_message(msg_id, f"{local}@{domain}", **extra))
            ids.append(msg_id)
        ledger.add(ids, status=status)
    t_bad = time.monotonic()
    publish(vhost, "bulk", bad_docs)
    time.sleep(1.0)                      # the bad sessions are under way
    during_msgs = _healthy_batch("during", n_healthy)
    ledger.add(during_msgs)
    during = _timed(vhost, collector, during_msgs)
    # the 421 receiver recovers after `outage` seconds from when its mail arrived
    remaining = outage - (time.monotonic() - t_bad)
    if remaining > 0:
        time.sleep(remaining)
    conns = sinks.connections()
    unreached = [d for d in BAD if not conns.get(bulk_ip(int(d[1:3])))]
    assert not unreached, f"the MTA never connected to {unreached}"
    sinks.set_greeting(bulk_ip(53), None)
    collector.collect(ledger.ids, timeout=240, settle=1.0)
    fig = ledger.check(collector.by_id, sinks.count_by_id(), sink_duplicates_allowed=0)
    line = (f"healthy: {n_healthy} messages in {baseline:.1f}s alone, {during:.1f}s beside "
            f"the misbehaving receivers")
    print(line)
    assert during <= max(3 * baseline, baseline + 10), f"{line}; {fig.line()}"
    dropped = [e for e in sinks.events() if e.kind == "drop"]
    assert dropped, "the drop receiver was never reached"


@pytest.mark.timeout(400)
def test_misbehaving_sinks_do_not_slow_the_others(vhost, sinks, start_mta, mta_config):
    _misbehaving_sinks(400, 10, 2.0, vhost, sinks, start_mta, mta_config)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_misbehaving_sinks_full(vhost, sinks, start_mta, mta_config):
    _misbehaving_sinks(1000, 30, 5.0, vhost, sinks, start_mta, mta_config)
