"""Memory with a deep queue: N messages waiting in RabbitMQ for many destinations.

    .venv/bin/python benchmarks/memory.py --messages 1000000 --domains 10000 --seconds 60

A private RabbitMQ node, dnsmasq serving m0.test .. m{D-1}.test, each with its own MX host
name (so each is its own destination) on one of 100 sink addresses (127.0.2.1-100, one
Postfix `smtp-sink` each). The messages are pre-published to the bulk lane, then the MTA
runs for --seconds while its RSS is sampled every second. Printed: peak RSS (VmHWM), RSS at
the end, messages delivered meanwhile, destinations the MTA created.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import aio_pika  # noqa: E402
import orjson  # noqa: E402
import yaml  # noqa: E402

from benchmarks.e2e import bench_config, declare, family, mime, private_rabbit, proc_stats  # noqa: E402
from tests.testbed.dns import Dnsmasq, bulk_ip  # noqa: E402
from tests.testbed.util import free_port  # noqa: E402

SINKS = 100


def zone(domains: int) -> list[str]:
    records = []
    for i in range(domains):
        records += [f"mx-host=m{i}.test,mx.m{i}.test,10", f"host-record=mx.m{i}.test,{bulk_ip(i % SINKS)}"]
    return records


async def prepublish(url: str, n: int, size: int, domains: int) -> None:
    body_of = {}
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange("mta")
        for start in range(0, n, 1000):
            batch = []
            for i in range(start, min(n, start + 1000)):
                text = body_of.get(i % 1000) or body_of.setdefault(i % 1000, mime(i % 1000, size))
                body = orjson.dumps({"id": f"m{i}", "recipient": f"user{i}@m{i % domains}.test",
                                     "envelope": "bounces@sender.test", "mime": text})
                batch.append(exchange.publish(aio_pika.Message(body, delivery_mode=2), routing_key="bulk"))
            await asyncio.gather(*batch)
            if start % 100_000 == 0:
                print(f"  published {start:,}", flush=True)


async def count_results(url: str) -> int:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("mta.results", passive=True)
        return queue.declaration_result.message_count


def open_sockets(pid: int) -> int:
    """The process's open sockets. A descriptor may close between the listing and its
    readlink (the MTA keeps working meanwhile): that one is not counted."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except FileNotFoundError:
            pass
    return count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--domains", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--ttl", type=int, default=3600, help="TTL of the DNS answers (seconds)")
    ap.add_argument("--connections", type=int, default=2, help="connection_limit per destination")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="mta-bench-mem-")
    os.chmod(work, 0o755)
    rabbit = None
    # A TTL as real zones have: the testbed's 5 s (raised to dns.min_ttl, 30 s) would have the MTA
    # look up 10,000 domains again every 30 s (MX, A, AAAA, the MTA-STS TXT record: four queries
    # through dnspython each; over a third of the MTA's CPU in a profile of such a run), which is
    # not what this measures.
    dns = Dnsmasq(records=zone(args.domains), log_queries=False, ttl=args.ttl)
    sinks: list[subprocess.Popen] = []
    mta = None
    try:
        rabbit = private_rabbit(work, "mtabenchmem")
        dns.start()
        smtp_port = free_port()
        sink_bin = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        for i in range(SINKS):
            sinks.append(subprocess.Popen([sink_bin, "-u", "nobody", f"{bulk_ip(i)}:{smtp_port}", "1000"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        url = rabbit.url("/")
        config_path = os.path.join(work, "mta.yaml")
        with open(config_path, "w") as fh:
            yaml.safe_dump(bench_config(url, dns.port, smtp_port, args.connections), fh)
        asyncio.run(declare(url, config_path))
        t = time.monotonic()
        asyncio.run(prepublish(url, args.messages, args.size, args.domains))
        print(f"pre-published {args.messages:,} x {args.size} B to {args.domains:,} domains "
              f"in {time.monotonic() - t:.0f}s", flush=True)

        log = open(os.path.join(work, "mta.log"), "wb")
        mta = subprocess.Popen([sys.executable, "-m", "mta", "run", config_path, "--log-level", "WARNING"],
                               cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        end = time.monotonic() + args.seconds
        rss = 0
        kinds = {}
        while time.monotonic() < end and mta.poll() is None:
            time.sleep(1)
            with open(f"/proc/{mta.pid}/status") as fh:
                for line in fh:
                    if line.startswith(("VmRSS:", "RssAnon:", "RssFile:", "RssShmem:")):
                        kinds[line.split(":")[0]] = int(line.split()[1]) * 1024
            rss = kinds.get("VmRSS", 0)
        user, system, peak = proc_stats(mta.pid)
        writers = [p for p in family(mta.pid) if p != mta.pid]  # the event store's writer
        writer_peak = sum(proc_stats(p)[2] for p in writers)
        sockets = open_sockets(mta.pid)
        mta.terminate()
        mta.wait(120)
        results = asyncio.run(count_results(url))
        print(f"MTA ran {args.seconds:.0f}s against {args.messages:,} queued messages for {args.domains:,} domains")
        print(f"peak RSS: {peak / 2**20:,.0f} MiB   RSS at the end: {rss / 2**20:,.0f} MiB   "
              f"results published: {results:,}   CPU: {user + system:.0f}s   open sockets at the end: {sockets:,}")
        print("of the RSS at the end: " + ", ".join(f"{k} {v / 2**20:,.0f} MiB" for k, v in kinds.items()
                                                    if k != "VmRSS") + " (RssFile: mapped files, the journal's too)")
        print(f"the event store's writer process: peak RSS {writer_peak / 2**20:,.0f} MiB; "
              f"the MTA's processes together at most {(peak + writer_peak) / 2**20:,.0f} MiB")
        return 0
    finally:
        if mta is not None and mta.poll() is None:
            mta.kill()
        for sink in sinks:
            sink.terminate()
        dns.stop()
        if rabbit is not None:
            rabbit.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
