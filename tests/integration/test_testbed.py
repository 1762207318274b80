"""The test bed itself: broker, DNS, sinks and helpers work (no MTA needed)."""

from __future__ import annotations

import asyncio
import base64
import json
import smtplib
import socket
import sys
import tempfile
import textwrap
import threading
import time
import uuid

import aio_pika
import dns.resolver as resolver
import pytest
import yaml

from tests.testbed import amqp
from tests.testbed.config import DELETE, write_config
from tests.testbed.dns import FAILOVER_DEAD_MX, standard_sink_addresses
from tests.testbed.mtaproc import MtaError, MtaProcess
from tests.testbed.rabbit import RabbitError, RabbitNode
from tests.testbed.util import free_port, wait_for

pytestmark = pytest.mark.timeout(120)


async def _declare_mta_topology(url: str) -> None:
    """What the MTA declares (SPEC §1), enough to exercise the helpers."""
    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel()
        ex = await ch.declare_exchange("mta", aio_pika.ExchangeType.DIRECT, durable=True)
        for lane in ("single", "bulk"):
            q = await ch.declare_queue(f"mta.{lane}", durable=True,
                                       arguments={"x-queue-type": "quorum"})
            await q.bind(ex, lane)
        res_ex = await ch.declare_exchange("mta.results", aio_pika.ExchangeType.TOPIC,
                                           durable=True)
        rq = await ch.declare_queue("mta.results", durable=True,
                                    arguments={"x-queue-type": "quorum"})
        await rq.bind(res_ex, "#")


async def _publish_results(url: str, docs) -> None:
    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        ex = await ch.get_exchange("mta.results")
        for d in docs:
            await ex.publish(aio_pika.Message(json.dumps(d).encode(),
                                              delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                             routing_key=d["status"])


# ---------------------------------------------------------------------- broker
def test_broker_vhost_publish_consume(rabbit, vhost):
    asyncio.run(_declare_mta_topology(vhost))
    bodies = [amqp.make_message(f"tb-{i}", f"user{i}@ok1.test") for i in range(50)]
    assert amqp.publish(vhost, "bulk", bodies) == 50
    # rabbitmqctl's queue statistics lag (refreshed every 0.5 s on the test node)
    wait_for(lambda: rabbit.queue_depth(vhost, "mta.bulk") == 50, 10, what="depth 50")
    assert rabbit.queue_depth(vhost, "no.such.queue") is None
    assert amqp.queue_info(vhost, "mta.bulk") == {"messages": 50, "consumers": 0}
    assert amqp.queue_info(vhost, "no.such.queue") is None
    got = amqp.drain_queue(vhost, "mta.bulk", expect=50, timeout=20)
    assert sorted(g.body for g in got) == sorted(bodies)
    assert all(g.delivery_mode == 2 and g.content_type == "application/json" for g in got)
    wait_for(lambda: rabbit.queue_depth(vhost, "mta.bulk") == 0, 10, what="depth 0")
    # an unroutable publish is an error (mandatory + on_return_raises), not a silent drop
    with pytest.raises(Exception):
        amqp.publish(vhost, "no-such-lane", [b"{}"])


def test_result_collector(vhost):
    asyncio.run(_declare_mta_topology(vhost))
    docs = [{"id": "a", "status": "deferred", "final": False, "attempts": 1},
            {"id": "a", "status": "delivered", "final": True, "attempts": 2},
            {"id": "b", "status": "bounced", "final": True, "attempts": 1, "bounce": "hard"},
            {"id": "c", "status": "deferred", "final": False, "attempts": 1}]
    asyncio.run(_publish_results(vhost, docs))
    t0 = time.monotonic()
    res = amqp.collect_results(vhost, {"a", "b"}, timeout=20, settle=0.3)
    assert time.monotonic() - t0 < 10, "collect_results must return once all finals arrived"
    assert amqp.statuses(res, "a") == ["deferred", "delivered"]
    assert [r["bounce"] for r in amqp.final_results(res, "b")] == ["hard"]
    assert amqp.statuses(res, "c") == ["deferred"]
    # a wanted id without a final result: returns at the timeout with what it has
    t0 = time.monotonic()
    res = amqp.collect_results(vhost, {"never"}, timeout=1.5)
    assert 1.4 <= time.monotonic() - t0 < 10 and "never" not in res


def test_mta_process_helper(vhost, tmp_path):
    fake = textwrap.dedent(f"""
        import asyncio, signal, sys, aio_pika
        async def main():
            conn = await aio_pika.connect({vhost!r})
            ch = await conn.channel()
            await ch.declare_queue("mta.bulk", durable=True)
            stop = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            print("fake mta ready", flush=True)
            await stop.wait()
            await conn.close()
        asyncio.run(main())
        """)
    cfg = str(tmp_path / "cfg.yaml")
    open(cfg, "w").write("{}\n")
    p = MtaProcess(cfg, cmd=[sys.executable, "-c", fake]).start()
    try:
        p.wait_ready(vhost, timeout=20)
        assert p.alive()
        assert p.terminate() == 0
        assert "fake mta ready" in p.log_text()
    finally:
        p.kill9()
    p2 = MtaProcess(cfg, cmd=[sys.executable, "-c", "import time; time.sleep(60)"]).start()
    p2.kill9()
    assert p2.returncode == -9 and not p2.alive()
    bad = MtaProcess(cfg, cmd=[sys.executable, "-c", "print('boom'); raise SystemExit(3)"]).start()
    with pytest.raises(MtaError, match="(?s)exited with 3.*boom"):
        bad.wait_ready(vhost, queue="mta.not-declared", timeout=20)


# ---------------------------------------------------------------------- DNS
def test_dns_zone(dns):
    r = dns.resolver()

    def mx(name):
        return sorted((a.preference, a.exchange.to_text()) for a in r.resolve(name, "MX"))

    def a(name):
        return sorted(x.to_text() for x in r.resolve(name, "A"))

    for n in (1, 2, 3):
        assert mx(f"ok{n}.test") == [(10, f"mx.ok{n}.test.")]
        assert a(f"mx.ok{n}.test") == [f"127.0.1.{n}"]
    assert mx("shared-a.test") == mx("shared-b.test") == [(10, "mx.shared.test.")]
    assert a("mx.shared.test") == ["127.0.1.4"]
    assert mx("failover.test") == [(10, "mx1.failover.test."), (20, "mx2.failover.test.")]
    assert a("mx1.failover.test") == [FAILOVER_DEAD_MX]
    assert a("mx2.failover.test") == ["127.0.1.5"]
    with pytest.raises(resolver.NoAnswer):
        r.resolve("amx.test", "MX")
    assert a("amx.test") == ["127.0.1.6"]
    assert mx("nullmx.test") == [(0, ".")]
    assert mx("noaddr.test") == [(10, "mx.noaddr.test.")]
    with pytest.raises(resolver.NoAnswer):
        r.resolve("mx.noaddr.test", "A")
    for name in ("nx.test", "mx.nx.test", "whatever.ok1.test"):
        with pytest.raises(resolver.NXDOMAIN):
            r.resolve(name, "MX")
    assert mx("d0.test") == [(10, "mx.d0.test.")]
    assert a("mx.d0.test") == ["127.0.2.1"]
    assert a("mx.d99.test") == ["127.0.2.100"]
    with pytest.raises(resolver.NXDOMAIN):
        r.resolve("d100.test", "MX")
    # nothing is forwarded: names outside the zone are refused, never looked up upstream
    with pytest.raises((resolver.NoNameservers, resolver.NXDOMAIN)):
        r.resolve("example.com", "A")


# ---------------------------------------------------------------------- sinks
def _send(port, host, rcpt, msg_id, sender="s@sender.test"):
    msg = (f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: t\r\n"
           f"Message-ID: <{msg_id}@test>\r\n\r\nbody\r\n.leading dot\r\n").encode()
    with smtplib.SMTP(host, port, local_hostname="client.test", timeout=10) as s:
        return s.sendmail(sender, [rcpt], msg)


def test_sink_behaviours(sinks):
    port = sinks.port
    with smtplib.SMTP("127.0.1.1", port, local_hostname="client.test", timeout=10) as s:
        code, _ = s.ehlo()
        assert code == 250
        for ext in ("8bitmime", "smtputf8", "size", "pipelining"):
            assert s.has_extn(ext), ext
    assert _send(port, "127.0.1.1", "ok@ok1.test", "id-ok") == {}
    for rcpt, code, enh in (("hard-x@ok1.test", 550, b"5.1.1"), ("full-x@ok1.test", 552, b"5.2.2"),
                            ("temp-x@ok1.test", 451, b"4.3.0")):
        with pytest.raises(smtplib.SMTPRecipientsRefused) as ei:
            _send(port, "127.0.1.1", rcpt, "id-" + rcpt)
        got_code, got_text = ei.value.recipients[rcpt]
        assert got_code == code and got_text.startswith(enh)
    for _ in range(2):
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            _send(port, "127.0.1.2", "temp2-x@ok2.test", "id-temp2")
    assert _send(port, "127.0.1.2", "temp2-x@ok2.test", "id-temp2") == {}
    with pytest.raises(smtplib.SMTPServerDisconnected):
        _send(port, "127.0.1.3", "drop-x@ok3.test", "id-drop")

    counts = sinks.count_by_id()
    assert counts.get("id-ok") == 1 and counts.get("id-temp2") == 1
    assert "id-drop" not in counts and "id-hard-x@ok1.test" not in counts
    rc = sinks.rcpt_attempts()
    assert rc["temp2-x@ok2.test"] == 3 and rc["hard-x@ok1.test"] == 1 and rc["drop-x@ok3.test"] == 1
    first = [a for a in sinks.accepted() if a.msg_id == "id-ok"][0]
    assert first.sink == "127.0.1.1" and first.rcpt == "ok@ok1.test"
    assert first.mail_from == "s@sender.test" and first.helo == "client.test"
    assert b"\r\n.leading dot\r\n" in first.data          # dot-unstuffed, CRLF
    kinds = [(e.kind, e.rcpt) for e in sinks.events()]
    assert ("drop", "drop-x@ok3.test") in kinds
    assert sum(1 for k in kinds if k == ("rcpt-reply", "temp2-x@ok2.test")) == 2
    conns = sinks.connections()
    assert conns["127.0.1.1"] == 5 and conns["127.0.1.3"] == 1
    assert sinks.current_sessions() == {} or sinks.current_sessions().keys() <= {"127.0.1.3"}


def test_sink_addresses_and_concurrency(sinks):
    port = sinks.port
    for addr in standard_sink_addresses():
        with socket.create_connection((addr, port), timeout=5) as s:
            assert s.recv(100).startswith(b"220")
    with pytest.raises(OSError):
        socket.create_connection((FAILOVER_DEAD_MX, port), timeout=2)
    # 3 simultaneous sessions on one address, 1 on another
    clients = [smtplib.SMTP("127.0.1.4", port, timeout=10) for _ in range(3)]
    other = smtplib.SMTP("127.0.1.5", port, timeout=10)
    time.sleep(0.2)
    for c in clients + [other]:
        c.quit()
    assert sinks.max_concurrent()["127.0.1.4"] == 3
    assert sinks.max_concurrent()["127.0.1.5"] == 1
    # scripted extras: refusing greeting, custom rule, slow DATA
    sinks.set_greeting("127.0.1.6", "421 4.7.0 Too many connections")
    with pytest.raises(smtplib.SMTPConnectError):
        smtplib.SMTP("127.0.1.6", port, timeout=5)
    sinks.set_greeting("127.0.1.6", None)
    sinks.add_rule("rate-", "421 4.7.0 rate limit exceeded for {rcpt}")
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        _send(port, "127.0.1.6", "rate-1@amx.test", "id-rate")
    sinks.set_data_delay("127.0.1.6", 0.3)
    t0 = time.monotonic()
    _send(port, "127.0.1.6", "slow@amx.test", "id-slow")
    assert time.monotonic() - t0 >= 0.3


def test_sink_throughput(sinks):
    """About 2,000 msg/s is the design point; require a conservative 500 per CPU second."""
    import aiosmtplib
    n_per, addrs = 100, standard_sink_addresses()[6:26]
    body = b"Message-ID: <tp-%d@test>\r\n\r\n" + (b"x" * 76 + b"\r\n") * 12

    async def worker(addr, k):
        c = aiosmtplib.SMTP(hostname=addr, port=sinks.port)
        await c.connect()
        for i in range(n_per):
            await c.sendmail("a@sender.test", [f"u{i}@d.test"], body % (k * n_per + i))
        await c.quit()

    async def main():
        await asyncio.gather(*(worker(a, k) for k, a in enumerate(addrs)))

    # Client and sinks both run in this process: its CPU time is what the messages cost,
    # whatever share of the machine other processes (parallel test workers) take.
    t0, c0 = time.monotonic(), time.process_time()
    asyncio.run(main())
    dt, cpu = time.monotonic() - t0, time.process_time() - c0
    assert sinks.accepted_count() == n_per * len(addrs)
    assert len(sinks.count_by_id()) == n_per * len(addrs)
    assert (n_per * len(addrs)) / cpu > 500, \
        f"{n_per * len(addrs) / cpu:.0f} msg per CPU second ({n_per * len(addrs) / dt:.0f} msg/s)"


# ---------------------------------------------------------------------- helpers
def test_make_message():
    doc = json.loads(amqp.make_message("m1", "rcpt@ok1.test", size=2048, tags=["a"]))
    assert doc["id"] == "m1" and doc["recipient"] == "rcpt@ok1.test"
    assert doc["envelope"] == "sender@sender.test" and doc["tags"] == ["a"]
    mime = doc["mime"]
    for h in ("Message-ID: <m1@test>", "From: ", "To: <rcpt@ok1.test>", "Subject: ", "Date: "):
        assert h in mime
    assert 1900 <= len(mime) <= 2200
    assert all(len(l) <= 998 for l in mime.split("\r\n"))
    d2 = json.loads(amqp.make_message("m2", None, envelope="", mime_b64=True))
    assert "recipient" not in d2 and "mime" not in d2 and d2["envelope"] == ""
    assert b"Message-ID: <m2@test>" in base64.b64decode(d2["mime_b64"])


def test_write_config(tmp_path):
    p = write_config(str(tmp_path / "c.yaml"), "amqp://guest:guest@127.0.0.1:5680/v", 5354, 2525,
                     default={"max_age": "4s", "tls": DELETE}, broker={"prefetch": 200},
                     domains={"ok1.test": {"connection_limit": 2}})
    cfg = yaml.safe_load(open(p))
    assert cfg["broker"] == {"url": "amqp://guest:guest@127.0.0.1:5680/v", "prefetch": 200}
    assert cfg["dns"] == {"nameservers": ["127.0.0.1"], "port": 5354}
    assert cfg["smtp"]["port"] == 2525 and cfg["smtp"]["helo"]
    assert cfg["metrics"] == {"port": 0}
    assert cfg["default"]["max_age"] == "4s" and cfg["default"]["retry_intervals"] == ["1s", "2s"]
    assert "tls" not in cfg["default"]
    assert cfg["domains"] == {"ok1.test": {"connection_limit": 2}}


# ---------------------------------------------------------------------- broker faults
def test_broker_restart_and_kill9_keep_persistent_messages(rabbit, vhost):
    asyncio.run(_declare_mta_topology(vhost))
    amqp.publish(vhost, "single", [amqp.make_message(f"p{i}", "u@ok1.test") for i in range(20)])
    rabbit.restart()
    assert amqp.queue_info(vhost, "mta.single")["messages"] == 20
    old_pid = rabbit.beam_pid()
    rabbit.kill9()
    assert rabbit.beam_pid() is None and not rabbit.running
    with pytest.raises(Exception):
        amqp.queue_info(vhost, "mta.single")
    rabbit.start()
    assert rabbit.beam_pid() not in (None, old_pid)
    assert amqp.queue_info(vhost, "mta.single")["messages"] == 20


def test_rabbit_boot_failure_reports_log(tmp_path):
    port = free_port(lo=33000, hi=40000)
    base = tempfile.mkdtemp(prefix="mta-rabbit-bad-", dir="/tmp")
    node = RabbitNode(base, port=port, dist_port=port + 10000, epmd_port=port + 11000,
                      nodename=f"mtabad{port}@localhost",
                      extra_conf={"no_such_setting.at_all": "1"}, boot_timeout=60)
    try:
        with pytest.raises(RabbitError, match="(?s)no_such_setting|exited"):
            node.start()
    finally:
        node.stop()
        import shutil
        shutil.rmtree(base, ignore_errors=True)
