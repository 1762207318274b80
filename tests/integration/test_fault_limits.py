"""Scenario 8 of the fault suite: resource limits.

A message over `smtp.max_message_size` is bounced (one final result, no SMTP), not crashed
on. Many destinations, each keeping a connection open, stay under the process's
file-descriptor budget: the MTA runs with a small RLIMIT_NOFILE, more connections are
wanted than it allows, and still every message ends delivered and the process lives.

The MTA derives its connection budget from the descriptor limit (mta.destinations.budget): on 2 CPUs,
at 256 descriptors it holds at most 128 connections, at 512 at most 380; destinations
beyond that wait for a slot, and idle connections of others are closed to make room.

CI: 100 destinations (up to 3 connections each) under 256 descriptors, and the issue's
2,000 destinations (two messages each, every one with its own MX host name, so its own
destination) under 512. Slow: 2,000 destinations that all want their connections at
once (slow DATA replies, five messages each) under 1,024 descriptors.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
import urllib.request

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import run_id
from tests.testbed.config import write_config
from tests.testbed.dns import Dnsmasq, bulk_ip
from tests.testbed.ledger import Ledger
from tests.testbed.mtaproc import MtaProcess
from tests.testbed.util import free_port


@pytest.mark.timeout(120)
def test_message_over_max_size_is_bounced(vhost, sinks, start_mta, mta_config):
    mta = start_mta(mta_config(smtp={"max_message_size": 50_000}))
    run = run_id()
    big = {f"big-{run}-{i}": f"big{i}-{run}@ok1.test" for i in range(3)}
    small = {f"small-{run}-{i}": f"small{i}-{run}@ok1.test" for i in range(3)}
    ledger = Ledger("max message size", bound=0)
    ledger.add(big, status="bounced")
    ledger.add(small, status="delivered")
    publish(vhost, "bulk", [make_message(i, r, size=200_000) for i, r in big.items()]
            + [make_message(i, r, size=2_000) for i, r in small.items()])
    collector = ResultCollector(vhost)
    collector.collect(ledger.ids, timeout=60, settle=1.0)
    ledger.check(collector.by_id, sinks.count_by_id(), sink_duplicates_allowed=0)
    for i in big:
        assert "5.3.4" in collector.finals(i)[0]["results"][-1]["description"]
    assert not [r for r in sinks.rcpt_attempts() if r.startswith("big")]
    assert mta.alive()


def _fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


@pytest.mark.timeout(300)
def test_many_open_connections_stay_under_the_fd_budget(vhost, sinks, mta_config):
    budget, n_domains = 256, 100
    cfg = mta_config(default={"connection_limit": 3, "idle_timeout": "60s",
                              "max_age": "120s", "retry_intervals": ["1s", "2s", "5s"]})
    mta = MtaProcess(cfg, log_path=cfg + ".fd.log",
                     cmd=["prlimit", f"--nofile={budget}:{budget}", sys.executable, "-m", "mta",
                          "run", cfg])
    peak = {"fds": 0}
    stop = threading.Event()
    for i in range(n_domains):     # slow receivers: every destination wants all its connections
        sinks.set_data_delay(bulk_ip(i), 0.3)
    try:
        mta.start()
        mta.wait_ready(vhost, timeout=60)

        def watch():
            while not stop.is_set():
                peak["fds"] = max(peak["fds"], _fd_count(mta.pid))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        run = run_id()
        msgs = {f"fd-{run}-{i}": f"user{i}-{run}@d{i % n_domains}.test"
                for i in range(n_domains * 15)}
        ledger = Ledger(f"fd budget {budget}, {n_domains} destinations", bound=0)
        ledger.add(msgs)
        publish(vhost, "bulk", [make_message(i, r) for i, r in msgs.items()])
        collector = ResultCollector(vhost)
        collector.collect(msgs, timeout=200, settle=1.0)
        stop.set()
        watcher.join(5)
        fig = ledger.check(collector.by_id, sinks.count_by_id(), sink_duplicates_allowed=0)
        emfile = sum(1 for _, r in collector.raw if r.get("status") == "deferred"
                     and "open files" in str(r.get("results", [{}])[-1].get("description")))
        print(f"fd budget {budget}: peak {peak['fds']} descriptors; connections "
              f"{sum(sinks.connections().values())}; attempts deferred by EMFILE {emfile}")
        assert mta.alive(), f"{fig.line()}: the MTA died\n{mta.log_tail()}"
        assert peak["fds"] < budget, fig.line()
        assert emfile == 0, fig.line()
    finally:
        stop.set()
        mta.terminate(timeout=30)


N_SINK_ADDRESSES = 100  # the session's sink farm listens on bulk_ip(0..99)


@pytest.fixture
def many_domains_dns():
    """A private dnsmasq with 2,000 domains fd{i}.test, each with an MX host of its own
    (so a destination of its own), spread over the sink farm's 100 addresses."""
    records = []
    for i in range(2000):
        records += [f"mx-host=fd{i}.test,mx.fd{i}.test,10",
                    f"host-record=mx.fd{i}.test,{bulk_ip(i % N_SINK_ADDRESSES)}"]
    server = Dnsmasq(records=records, log_queries=False)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert m, f"{name} not exported"
    return float(m[1])


def _many_destinations(vhost, sinks, dns, tmp_path, *, nofile: int, n_domains: int, per_domain: int,
                       data_delay: float, timeout: float) -> None:
    """Every destination gets its mail through a connection of its own, under `nofile`
    descriptors: all delivered exactly once, the descriptor count stays under the limit,
    the sinks never see more sessions at once than the budget, no EMFILE anywhere."""
    port = free_port()
    cfg = write_config(str(tmp_path / "mta.yaml"), vhost, dns.port, sinks.port,
                       metrics={"port": port, "address": "127.0.0.1"},
                       broker={"prefetch": 2000},
                       default={"connection_limit": 2, "idle_timeout": "60s", "max_age": "300s",
                                "retry_intervals": ["1s", "2s", "5s"]})
    if data_delay:
        for i in range(N_SINK_ADDRESSES):
            sinks.set_data_delay(bulk_ip(i), data_delay)
    mta = MtaProcess(cfg, log_path=cfg + ".log",
                     cmd=["prlimit", f"--nofile={nofile}:{nofile}", sys.executable, "-m", "mta", "run", cfg])
    peak = {"fds": 0, "sessions": 0}
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak["fds"] = max(peak["fds"], _fd_count(mta.pid))
            peak["sessions"] = max(peak["sessions"], sum(sinks.current_sessions().values()))
            time.sleep(0.02)

    try:
        mta.start()
        mta.wait_ready(vhost, timeout=60, require_consumer=True)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        run = run_id()
        msgs = {f"many-{run}-{d}-{j}": f"user{j}-{run}@fd{d}.test"
                for j in range(per_domain) for d in range(n_domains)}
        ledger = Ledger(f"{n_domains} destinations under {nofile} descriptors", bound=0)
        ledger.add(msgs)
        started = time.monotonic()
        publish(vhost, "bulk", [make_message(i, r) for i, r in msgs.items()])
        collector = ResultCollector(vhost)
        collector.collect(msgs, timeout=timeout, settle=1.0)
        took = time.monotonic() - started
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        stop.set()
        watcher.join(5)
        fig = ledger.check(collector.by_id, sinks.count_by_id(), sink_duplicates_allowed=0)
        budget = _metric(metrics, "mta_connections_budget")
        waits = _metric(metrics, "mta_connections_budget_waits_total")
        evictions = _metric(metrics, "mta_connections_budget_evictions_total")
        domains = {a.rcpt.rsplit("@", 1)[1] for a in sinks.accepted() if run in a.rcpt}
        log = mta.log_text()
        print(f"{n_domains} destinations, {len(msgs)} messages in {took:.1f}s (load {os.getloadavg()[0]:.2f}): "
              f"descriptor limit {nofile}, budget {budget:.0f} connections; peak {peak['fds']} descriptors, "
              f"peak {peak['sessions']} sessions at the sinks; {sum(sinks.connections().values())} connections, "
              f"{waits:.0f} waits for a slot, {evictions:.0f} idle connections closed to make room")
        assert mta.alive(), f"{fig.line()}: the MTA died\n{mta.log_tail()}"
        assert len(domains) == n_domains, fig.line()
        assert peak["fds"] < nofile, fig.line()
        assert peak["sessions"] <= budget < nofile, fig.line()
        assert waits > 0 and evictions > 0, "the budget was never full: the test proves nothing"
        assert "Too many open files" not in log and "EMFILE" not in log, mta.log_tail()
        assert f"connection budget: {budget:.0f} SMTP connections" in log
    finally:
        stop.set()
        mta.terminate(timeout=30)


@pytest.mark.timeout(240)
def test_two_thousand_destinations_stay_under_the_fd_budget(vhost, sinks, many_domains_dns, tmp_path):
    _many_destinations(vhost, sinks, many_domains_dns, tmp_path, nofile=512, n_domains=2000, per_domain=2,
                       data_delay=0.0, timeout=180)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_thousand_busy_destinations_stay_under_the_fd_budget(vhost, sinks, many_domains_dns, tmp_path):
    _many_destinations(vhost, sinks, many_domains_dns, tmp_path, nofile=1024, n_domains=2000, per_domain=5,
                       data_delay=0.2, timeout=500)


@pytest.mark.timeout(300)
def test_single_mail_gets_a_slot_while_bulk_fills_the_budget(vhost, sinks, mta_config, start_mta):
    """`smtp.max_connections: 10`: bulk to 5 slow destinations (3 connections each wanted)
    takes 9 (the tenth is the single lane's) and keeps them busy for seconds (40 messages
    each, 0.3 s per DATA); a single message to another destination is delivered at once,
    long before the bulk backlog is through and before any bulk connection goes idle."""
    n_domains, budget = 5, 10
    cfg = mta_config(smtp={"max_connections": budget},
                     default={"connection_limit": 3, "idle_timeout": "60s", "max_age": "300s"})
    for i in range(n_domains):
        sinks.set_data_delay(bulk_ip(i), 0.3)
    mta = start_mta(cfg)
    assert f"connection budget: {budget} SMTP connections" in mta.log_text()
    run = run_id()
    bulk = {f"bulk-{run}-{i}": f"user{i}-{run}@d{i % n_domains}.test" for i in range(40 * n_domains)}
    single = {f"single-{run}": f"user-{run}@ok1.test"}
    ledger = Ledger("single lane under a full connection budget", bound=0)
    ledger.add(bulk)
    ledger.add(single)
    peak = {"sessions": 0}
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak["sessions"] = max(peak["sessions"], sum(sinks.current_sessions().values()))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        publish(vhost, "bulk", [make_message(i, r) for i, r in bulk.items()])
        deadline = time.monotonic() + 60
        while sum(sinks.current_sessions().values()) < budget - 1:  # bulk holds all it may
            assert time.monotonic() < deadline, f"bulk never filled the budget: {sinks.current_sessions()}"
            time.sleep(0.05)
        sent = time.monotonic()
        publish(vhost, "single", [make_message(i, r) for i, r in single.items()])
        assert _wait_for_id(sinks, next(iter(single)), 10), "single mail waited behind bulk for a slot"
        waited = time.monotonic() - sent
        bulk_done = sum(1 for a in sinks.accepted() if a.rcpt.startswith("user") and "@d" in a.rcpt)
        collector = ResultCollector(vhost)
        collector.collect(ledger.ids, timeout=200, settle=1.0)
        stop.set()
        watcher.join(5)
        fig = ledger.check(collector.by_id, sinks.count_by_id(), sink_duplicates_allowed=0)
        print(f"single delivered {waited:.2f}s after it was published, with {bulk_done}/{len(bulk)} bulk delivered; "
              f"peak {peak['sessions']} sessions at the sinks (budget {budget})")
        assert waited < 2.0 and bulk_done < len(bulk) // 2, fig.line()
        assert peak["sessions"] <= budget, fig.line()
    finally:
        stop.set()


def _wait_for_id(sinks, msg_id: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while msg_id not in sinks.count_by_id():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
