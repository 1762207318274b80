"""The demo: a private RabbitMQ, a private DNS server, scripted SMTP receivers on loopback,
the MTA, and a few hundred messages; prints live progress and what happened.

Run it through `bash scripts/demo.sh`, which installs what is missing first.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import aio_pika  # noqa: E402
import orjson  # noqa: E402

from tests.testbed.amqp import make_message, publish  # noqa: E402
from tests.testbed.config import write_config  # noqa: E402
from tests.testbed.dns import Dnsmasq, standard_sink_addresses, standard_zone  # noqa: E402
from tests.testbed.mtaproc import MtaProcess  # noqa: E402
from tests.testbed.rabbit import RabbitNode  # noqa: E402
from tests.testbed.sinks import SinkFarm  # noqa: E402
from tests.testbed.redisd import RedisServer  # noqa: E402
from tests.testbed.util import free_port, port_is_free  # noqa: E402
from tests.testbed.tls import TestCA  # noqa: E402

DOMAINS = ["ok1.test", "ok2.test", "ok3.test", "shared-a.test", "shared-b.test", "failover.test",
           "amx.test"] + [f"d{i}.test" for i in range(10)]


def workload(rng: random.Random) -> list[tuple[str, str, bytes]]:
    """(id, lane, body): mostly deliverable mail, plus the cases an operator meets."""
    out = []
    for i in range(300):
        domain = DOMAINS[i % len(DOMAINS)]
        kind = rng.choices(["user", "hard-", "full-", "temp2-", "temp-"], [85, 5, 3, 5, 2])[0]
        local = f"{kind}{i}" if kind != "user" else f"user{i}"
        lane = "single" if i % 10 == 0 else "bulk"
        out.append((f"demo-{i}", lane, make_message(f"demo-{i}", f"{local}@{domain}", tags=["demo"])))
    out.append(("demo-nullmx", "bulk", make_message("demo-nullmx", "someone@nullmx.test")))
    out.append(("demo-nxdomain", "bulk", make_message("demo-nxdomain", "someone@nx.test")))
    out.append(("demo-invalid-1", "bulk", b'{"id": "demo-invalid-1", "recipient": "no-at-sign", "envelope": "", "mime": "x"}'))
    out.append(("demo-invalid-2", "bulk", b"this is not JSON"))
    return out


SHOP_PASSWORD = "demo-shop-password"


def submission(work: str) -> tuple[dict, int, str]:
    """A STARTTLS listener (a certificate of a CA made here) and the source `shop` that logs
    in with a password and sends for shop.test (SPEC §7): (config, port, CA file)."""
    ca = TestCA(work)
    cert, key = ca.issue(names=["localhost"], ips=["127.0.0.1"])
    port = free_port()
    return {"listeners": [{"address": f"127.0.0.1:{port}", "tls": "starttls", "cert_file": cert, "key_file": key}],
            "sources": {"shop": {"users": [{"username": "shop", "password_env": "DEMO_SHOP_PASSWORD"}],
                                 "sender_domains": ["shop.test"], "tags": ["webshop"]}}}, port, ca.ca_file


def submit_over_smtp(port: int, ca_file: str, count: int) -> list[str]:
    """What a web shop does: STARTTLS, AUTH, one message per order; the ids the 250s name."""
    import smtplib
    import ssl

    ids = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.starttls(context=ssl.create_default_context(cafile=ca_file))
        client.login("shop", SHOP_PASSWORD)
        for i in range(count):
            data = (f"From: Shop <orders@shop.test>\r\nTo: <buyer{i}@ok1.test>\r\nSubject: Your order {i}\r\n"
                    f"Message-ID: <order-{i}@shop.test>\r\n\r\nThank you for your order.\r\n").encode()
            client.mail("orders@shop.test")
            client.rcpt(f"buyer{i}@ok1.test")
            code, text = client.data(data)
            ids.append(text.decode().rsplit(" ", 1)[-1])
    print(f"submitted {count} messages over SMTP (STARTTLS, AUTH as source shop): "
          f"250 2.0.0 OK queued as {ids[0]} ...")
    return ids


BOUNCES = "bounces.test"
VERP_KEY = "demo-verp-key"


def late_bounce(url: str, sinks, port: int) -> tuple[bool, str]:
    """What a receiver that accepted a message and found no mailbox afterwards does (SPEC §8):
    a bounce to the message's VERP envelope sender, on the inbound listener. The late result,
    and the next message to that recipient suppressed."""
    import smtplib

    from mta.config import VerpConfig
    from mta.inbound.verp import Verp, verp_decode
    from tests.testbed.amqp import ResultCollector

    delivered = next(a for a in sinks.accepted() if a.rcpt.startswith("user") and BOUNCES in a.mail_from)
    bounce = (f"From: MAILER-DAEMON@mx.ok.test\r\nTo: {delivered.mail_from}\r\nSubject: failure notice\r\n\r\n"
              "Hi. This is the qmail-send program at mx.ok.test.\r\nI'm afraid I wasn't able to deliver your "
              "message to the following addresses.\r\nThis is a permanent error; I've given up. Sorry it didn't "
              f"work out.\r\n\r\n<{delivered.rcpt}>:\r\nSorry, no mailbox here by that name. (#5.1.1)\r\n").encode()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("", [delivered.mail_from], bounce)
    msg_id, _ = verp_decode(Verp(VerpConfig(domain=BOUNCES), VERP_KEY.encode()), delivered.mail_from)
    results = ResultCollector(url)
    results.collect(until=lambda r: any(d.get("late") for d in r.finals(msg_id)), timeout=20)
    late = [d for d in results.finals(msg_id) if d.get("late")]
    print(f"\na late bounce for {delivered.rcpt} (sent to {delivered.mail_from} on the inbound listener "
          f"127.0.0.1:{port}):")
    if not late:
        print("  no late result came")
        return False, delivered.rcpt
    print(f"  result: {late[0]['status']} late={late[0]['late']} bounce={late[0]['bounce']} "
          f"({late[0]['results'][0]['description'][:60]})")
    publish(url, "bulk", [make_message(f"{msg_id}-again", delivered.rcpt)])
    results.collect([f"{msg_id}-again"], timeout=20)
    again = results.finals(f"{msg_id}-again")
    status = again[0]["status"] if again else "(none)"
    print(f"  the next message to {delivered.rcpt}: {status}")
    return status == "suppressed", delivered.rcpt


def show_trace(config: str, recipient: str) -> bool:
    """`mta trace RECIPIENT`: both messages to that recipient, from the event store."""
    import subprocess

    command = [sys.executable, "-m", "mta", "trace", recipient, "-c", config]
    deadline = time.monotonic() + 10
    while True:  # the tracker writes every quarter second
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60)
        if "suppressed" in done.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    print(f"\n$ mta trace {recipient} -c {os.path.relpath(config, ROOT)}")
    print(done.stdout.rstrip() or done.stderr.rstrip())
    return "suppressed" in done.stdout


def show_console(ports: list[int]) -> bool:
    """The console each MTA serves beside its metrics (it stops with the demo)."""
    ok = True
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/console", timeout=5) as response:
                page = response.read().decode()
        except OSError as exc:
            print(f"console http://127.0.0.1:{port}/console did not answer: {exc}")
            ok = False
            continue
        processed = page.split("processed", 1)[1][:200] if "processed" in page else ""
        number = next((w for w in processed.replace(">", " ").replace("<", " ").split() if w.isdigit()), "?")
        print(f"console: http://127.0.0.1:{port}/console answered {response.status} "
              f"(overview: {number} messages processed; see docs/console/ for its pages)")
    return ok


def scrape(ports: list[int]) -> dict[str, float]:
    """The MTAs' own counters from their metrics endpoints, summed over labels and nodes."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, float] = collections.defaultdict(float)
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                text = response.read().decode()
        except OSError:
            continue
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                totals[sample.name] += sample.value
    return totals


def progress_line(elapsed: float, m: dict[str, float], finals: int, expected: int) -> str:
    """The delivery console in one line, from the MTA's metrics."""
    parts = [("processed", "mta_messages_processed_total"), ("attempts", "mta_delivery_attempts_total"),
             ("delivered", "mta_delivered_total"), ("deferred", "mta_deferred_total"),
             ("bounced", "mta_bounced_total"), ("expired", "mta_expired_total"),
             ("not tried", "mta_not_tried_total"), ("connections", "mta_connections_open")]
    console = "  ".join(f"{name} {int(m.get(metric, 0))}" for name, metric in parts)
    return f"  {elapsed:5.1f}s  {console}  | final results {finals}/{expected}"


async def watch(url: str, ids: set[str], timeout: float, metrics_ports: list[int]) -> dict[str, collections.Counter]:
    """Consume results, printing a live progress line from the MTA's metrics, until every
    id has a final result."""
    finals: dict[str, str] = {}
    seen = collections.Counter()
    arrived: asyncio.Queue = asyncio.Queue()
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue("mta.results")
        await queue.consume(arrived.put, no_ack=True)
        started = time.monotonic()
        deadline = started + timeout
        last_print = 0.0
        while len(finals) < len(ids) and time.monotonic() < deadline:
            try:
                message = await asyncio.wait_for(arrived.get(), 0.5)
            except asyncio.TimeoutError:
                message = None
            if message is not None:
                doc = orjson.loads(message.body)
                seen[doc["status"]] += 1
                if doc.get("final"):
                    finals[str(doc.get("id", f"invalid-{len(finals)}"))] = doc["status"]
            now = time.monotonic()
            if now - last_print > 0.5 or len(finals) == len(ids):
                last_print = now
                line = progress_line(now - started, scrape(metrics_ports), len(finals), len(ids))
                print(f"\r{line:<130}", end="", flush=True)
    print()
    return {"finals": collections.Counter(finals.values()), "events": seen}


def main() -> int:
    parser = argparse.ArgumentParser(description="the MTA's demo on loopback")
    parser.add_argument("--nodes", type=int, default=1,
                        help="run N MTA processes sharing their limits through a private Redis (SPEC §6)")
    nodes = parser.parse_args().nodes
    base = os.path.join(ROOT, ".run", "demo")
    os.makedirs(base, exist_ok=True)
    os.chmod(os.path.join(ROOT, ".run"), 0o755)
    work = tempfile.mkdtemp(prefix="demo-", dir=base)
    os.chmod(work, 0o755)
    print("starting a private RabbitMQ node, dnsmasq and SMTP sinks on loopback ...")
    rabbit = RabbitNode(os.path.join(work, "rabbit"), port=free_port(), nodename="mtademo@localhost")
    dns = Dnsmasq(records=standard_zone(10), log_queries=False)
    sinks = SinkFarm(standard_sink_addresses(10))
    store = RedisServer() if nodes > 1 else None
    mta = None
    try:
        rabbit.start()
        dns.start()
        sinks.start()
        url = rabbit.url("/")
        metrics_port = free_port()
        while not all(port_is_free(metrics_port + i) for i in range(nodes)):
            metrics_port = free_port()
        cluster = {}
        if store is not None:
            print("starting a private Redis for the nodes' shared limits ...")
            store.start()
            cluster = {"cluster": {"store": store.url, "node": "demo"}}
        listening, smtp_port, ca_file = submission(work)
        inbound_port = free_port()
        listening.update(inbound=[{"address": f"127.0.0.1:{inbound_port}", "domains": [BOUNCES]}],
                         envelope_verp={"domain": BOUNCES, "key_env": "DEMO_VERP_KEY"})
        config = write_config(os.path.join(work, "mta.yaml"), url, dns.port, sinks.port,
                              default={"retry_intervals": ["2s", "4s"], "max_age": "12s"},
                              metrics={"port": metrics_port, "address": "127.0.0.1"}, **cluster, **listening)
        print(f"rules: {config} (retries after 2s, then every 4s; mail expires after 12s)")
        metrics_ports = [metrics_port + i for i in range(nodes)]
        print("metrics: " + ", ".join(f"http://127.0.0.1:{p}/metrics" for p in metrics_ports))
        mta = MtaProcess(config, args=["--processes", str(nodes)] if nodes > 1 else [],
                         env={"DEMO_SHOP_PASSWORD": SHOP_PASSWORD, "DEMO_VERP_KEY": VERP_KEY}).start()
        mta.wait_ready(url, timeout=60)
        if nodes > 1:
            print(f"{nodes} MTA processes (nodes demo-0 .. demo-{nodes - 1}) share one set of limits")
        messages = workload(random.Random(7))
        for lane in ("single", "bulk"):
            publish(url, lane, [body for _, l, body in messages if l == lane])
        print(f"published {len(messages)} messages to {len(DOMAINS) + 2} domains "
              "(some to mailboxes that bounce, defer, or expire; two invalid) ...")
        print(f"submission listener: 127.0.0.1:{smtp_port} (STARTTLS); try: swaks --server 127.0.0.1:{smtp_port} "
              f"--tls --auth-user shop --auth-password {SHOP_PASSWORD} --from orders@shop.test --to you@ok1.test")
        submitted = submit_over_smtp(smtp_port, ca_file, 5)
        started = time.monotonic()
        ids = {i for i, _, _ in messages} | set(submitted)
        outcome = asyncio.run(watch(url, ids, timeout=90, metrics_ports=metrics_ports))
        elapsed = time.monotonic() - started
        finals = outcome["finals"]
        print(f"\nfinal outcomes after {elapsed:.1f}s:")
        for status in ("delivered", "bounced", "expired", "invalid"):
            print(f"  {status:<10} {finals.get(status, 0):>4}")
        print(f"  deferrals along the way: {outcome['events'].get('deferred', 0)} "
              "(each retried from a delay queue)")
        print(f"  the SMTP sinks accepted {sinks.accepted_count()} messages")
        missing = len(ids) - sum(finals.values())
        if missing:
            print(f"  {missing} message(s) had no final result yet")
        suppressed, recipient = late_bounce(url, sinks, inbound_port)
        traced = show_trace(config, recipient)
        console = show_console(metrics_ports)
        return 0 if missing == 0 and suppressed and traced and console else 1
    finally:
        if mta is not None:
            code = mta.terminate()
            print(f"MTA stopped (exit {code}); log: {mta.log_path}")
        sinks.stop()
        dns.stop()
        rabbit.stop()
        if store is not None:
            store.remove()


if __name__ == "__main__":
    sys.exit(main())
