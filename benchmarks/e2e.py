"""End-to-end throughput: private broker, N pre-published messages, loopback sinks, many domains.

    .venv/bin/python benchmarks/e2e.py --messages 20000 --size 1024 --domains 100

Starts a private RabbitMQ node, dnsmasq serving d0.test .. d{N-1}.test (each its own MX
address on 127.0.2.x), one Postfix `smtp-sink` per MX address, pre-publishes the messages to
the bulk lane, then starts the MTA and measures until every message has a final result:

- delivered msg/s: from the first to the last SMTP acceptance (the `time` of the 250 in the
  results), and from MTA start to the last result (includes start-up);
- CPU per message: the MTA process's user+system time (with its children: the event
  store's writer) divided by the messages; and once running: the same from the moment a
  tenth of the results are in (start-up left out);
- peak RSS of the MTA process (VmHWM).

No limit binds (rates and connections are set high), so this measures the engine.
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
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import aio_pika  # noqa: E402
import orjson  # noqa: E402
import yaml  # noqa: E402

from tests.testbed.dns import Dnsmasq, bulk_ip, standard_zone  # noqa: E402
from tests.testbed.rabbit import RabbitNode  # noqa: E402
from tests.testbed.util import free_port, port_is_free  # noqa: E402
from benchmarks.postfix import PrivatePostfix, inject, smtp_source  # noqa: E402


def private_rabbit(work: str, name: str) -> RabbitNode:
    """A started private node on free ports (AMQP, distribution and epmd), retried if another
    process takes a port between the check and the boot."""
    for attempt in range(3):
        for _ in range(50):
            port = free_port(lo=20000, hi=32000)
            if port_is_free(port + 20000) and port_is_free(port + 21000):
                break
        rabbit = RabbitNode(os.path.join(work, f"rabbit{attempt}"), port=port, dist_port=port + 20000,
                            epmd_port=port + 21000, nodename=f"{name}{port}@localhost")
        try:
            rabbit.start()
            return rabbit
        except Exception as exc:
            rabbit.stop()
            if attempt == 2:
                raise
            print(f"broker did not boot ({str(exc).splitlines()[0]}); trying other ports", file=sys.stderr)
    raise AssertionError("unreachable")


def start_sinks(domains: int, port: int) -> list[subprocess.Popen]:
    """One Postfix `smtp-sink` per MX address (d0.test .. d{domains-1}.test), on `port`."""
    sink_bin = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    return [subprocess.Popen([sink_bin, "-u", "nobody", f"{bulk_ip(i)}:{port}", "1000"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for i in range(domains)]


def bench_config(url: str, dns_port: int, smtp_port: int, connections: int, *,
                 prefetch: int | None = None, tracking: bool = True, queue_type: str = "quorum") -> dict:
    """The MTA's rules for a benchmark: the private broker, DNS and sinks; no limit binds.
    `queue_type` classic-v2: classic queues, stored as version 2 by a policy (set_queue_version)."""
    broker = {"url": url, "queue_type": queue_type.split("-")[0]}
    if prefetch is not None:
        broker["prefetch"] = prefetch
    return {
        "tracking": {"enabled": tracking},
        "broker": broker,
        "dns": {"nameservers": ["127.0.0.1"], "port": dns_port},
        "smtp": {"port": smtp_port, "helo": "bench.mta.test"},
        "metrics": {"port": 0},
        "default": {"connection_limit": connections, "max_message_rate": "1000000/s",
                    "max_connection_rate": "100000/min", "max_deliveries_per_connection": 1000},
    }


def mime(i: int, size: int) -> str:
    head = (f"Message-ID: <b{i}@bench.test>\nFrom: Bench <bench@sender.test>\nTo: user{i}@d.test\n"
            f"Subject: benchmark message {i}\nDate: Mon, 23 Nov 2026 12:00:00 +0000\n\n")
    line = "x" * 76 + "\n"
    return head + line * max(1, (size - len(head)) // len(line))


async def prepublish(url: str, n: int, size: int, domains: int, prefix: str = "b", crlf: bool = False) -> None:
    """n messages to the bulk lane, ids `{prefix}0` ..: a run that shares a record of final
    outcomes with an earlier one needs ids of its own, or it would find them all sent.
    `crlf`: the MIME with CRLF line ends (as a producer that writes SMTP's own sends it), else LF."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange("mta")
        for start in range(0, n, 500):
            batch = []
            for i in range(start, min(n, start + 500)):
                body = orjson.dumps({"id": f"{prefix}{i}", "recipient": f"user{i}@d{i % domains}.test",
                                     "envelope": "bounces@sender.test",
                                     "mime": mime(i, size).replace("\n", "\r\n") if crlf else mime(i, size)})
                batch.append(exchange.publish(aio_pika.Message(body, delivery_mode=2), routing_key="bulk"))
            await asyncio.gather(*batch)


def set_queue_version(rabbit, queue_type: str, vhost: str = "/") -> None:
    """Classic queues of version 2 (RabbitMQ 3.10+: a new message store and index) for
    `classic-v2`, by a policy on every queue of the vhost; nothing for the others."""
    if queue_type == "classic-v2":
        rabbit.ctl("set_policy", "-p", vhost, "queue-v2", ".*", '{"queue-version": 2}', "--apply-to", "queues")


async def declare(url: str, config_path: str) -> None:
    """The MTA's own topology, so that messages can be queued before it starts."""
    from mta.config import load_config
    from mta.broker.topology import Topology

    config = load_config(config_path)
    connection = await aio_pika.connect(url)
    async with connection:
        await Topology(config.broker.queue_type, config.broker.delivery_limit).declare(await connection.channel())


async def wait_published(url: str, n: int, timeout: float, mark=None) -> None:
    """Until `mta.results` holds n messages. Nobody consumes them meanwhile: reading the
    results during the run would cost the shared cores about as much as the broker does.
    `mark(count)` is called once, when a tenth of them are in."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            queue = await channel.declare_queue("mta.results", passive=True)
            count = queue.declaration_result.message_count
            if mark is not None and count >= n // 10:
                mark(count)
                mark = None
            if count >= n:
                return
            await asyncio.sleep(0.05)
    raise TimeoutError(f"fewer than {n} results after {timeout:.0f}s")


async def wait_results(url: str, n: int, timeout: float) -> tuple[dict, list[float]]:
    counts: dict[str, int] = {}
    accepted: list[float] = []
    finals = 0
    done = asyncio.Event()
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=5000)
        queue = await channel.get_queue("mta.results")

        async def on_result(message) -> None:
            nonlocal finals
            doc = orjson.loads(message.body)
            counts[doc["status"]] = counts.get(doc["status"], 0) + 1
            if doc["status"] == "delivered":
                accepted.append(datetime.fromisoformat(doc["results"][-1]["time"].replace("Z", "+00:00")).timestamp())
            if doc["final"]:
                finals += 1
                if finals >= n:
                    done.set()
            await message.ack(multiple=True)

        await queue.consume(on_result)
        await asyncio.wait_for(done.wait(), timeout)
    return counts, accepted


def cpu_of(pids) -> float:
    """User+system CPU seconds of live processes (0 for any that is gone)."""
    total = 0.0
    for pid in pids:
        try:
            total += sum(proc_stats(pid)[:2])
        except (OSError, ValueError):
            pass
    return total


def family(pid: int) -> list[int]:
    """A process and its children (the MTA's event writer), as far as they are alive."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [pid, *(int(c) for c in fh.read().split())]
    except OSError:
        return [pid]


def family_stats(pid: int) -> tuple[float, float, int, float]:
    """proc_stats of a process and its children summed (peak RSS: the process's own), and
    the children's CPU seconds alone."""
    user = system = children = 0.0
    peak = 0
    for p in family(pid):
        try:
            u, s, rss = proc_stats(p)
        except (OSError, ValueError, IndexError):  # a child gone meanwhile
            continue
        user, system = user + u, system + s
        if p == pid:
            peak = rss
        else:
            children += u + s
    return user, system, peak, children


def proc_stats(pid: int) -> tuple[float, float, int]:
    """(user CPU seconds, system CPU seconds, peak RSS bytes) of a live process."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    user, system = int(fields[11]) / ticks, int(fields[12]) / ticks
    peak = 0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return user, system, peak


def client_alone(target: str, messages: int, size: int, connections: int) -> dict:
    """aiosmtplib alone (benchmarks/client_alone.py) in a process of its own: msg/s, CPU per message."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "client_alone.py"), "--to", target,
                           "--messages", str(messages), "--size", str(size), "--connections", str(connections)],
                          check=True, capture_output=True, cwd=ROOT)
    return orjson.loads(done.stdout.splitlines()[-1])


def run_postfix(postfix: PrivatePostfix, args) -> dict:
    """Fill a private Postfix's queue with the same messages, release it, time the drain."""
    postfix.start()
    messages = [("bench@sender.test", f"user{i}@d{i % args.domains}.test",
                 mime(i, args.size).replace("\n", "\r\n").encode()) for i in range(args.messages)]
    t = time.monotonic()
    asyncio.run(inject(postfix.port, messages))
    while postfix.queued() < args.messages:  # everything deferred, nothing delivered
        time.sleep(0.1)
    inject_rate = args.messages / (time.monotonic() - t)
    cpu0 = postfix.cpu_seconds()
    t = time.monotonic()
    postfix.release()
    deadline = t + args.timeout
    while postfix.queued() and time.monotonic() < deadline:
        time.sleep(0.05)
    drain = time.monotonic() - t
    time.sleep(1)  # postlogd writes asynchronously
    sent = postfix.sent_times()
    cpu = postfix.cpu_seconds() - cpu0
    if len(sent) != args.messages:
        print(f"warning: Postfix logged {len(sent)} deliveries of {args.messages}; "
              f"{postfix.queued()} still queued")
    span = max(sent) - min(sent) if len(sent) > 1 else float("nan")
    return {"drain": args.messages / drain, "logged": len(sent) / span, "inject": inject_rate,
            "cpu": cpu / args.messages}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--size", type=int, default=1024, help="approximate MIME size in bytes")
    ap.add_argument("--domains", type=int, default=100)
    ap.add_argument("--crlf", action="store_true", help="publish the MIME with CRLF line ends (default LF)")
    ap.add_argument("--connections", type=int, default=10, help="connection_limit per destination")
    ap.add_argument("--prefetch", type=int, default=1000, help="broker.prefetch of the bulk lane")
    ap.add_argument("--queue-type", choices=("quorum", "classic", "classic-v2"), default="quorum",
                    help="broker.queue_type of the MTA's queues (classic-v2: classic, version 2 by a policy)")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--no-postfix", dest="postfix", action="store_false",
                    help="skip the private Postfix relaying the same messages")
    ap.add_argument("--no-raw", dest="raw", action="store_false", help="skip smtp-source -> smtp-sink alone")
    ap.add_argument("--no-client", dest="client", action="store_false",
                    help="skip aiosmtplib alone (benchmarks/client_alone.py) against one sink")
    ap.add_argument("--no-tracking", dest="tracking", action="store_false",
                    help="run the MTA with tracking.enabled: false (the event store's cost, by difference)")
    ap.add_argument("--cprofile", metavar="FILE", help="run the MTA under cProfile, stats into FILE")
    ap.add_argument("--profile", metavar="FILE", help="record the MTA with py-spy into FILE (speedscope JSON or .svg)")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="mta-bench-")
    os.chmod(work, 0o755)  # the broker runs as the rabbitmq user and must reach its directory
    rabbit = None
    dns = Dnsmasq(records=standard_zone(args.domains), log_queries=False)
    sinks: list[subprocess.Popen] = []
    mta = None
    postfix = None
    try:
        rabbit = private_rabbit(work, "mtabench")
        dns.start()
        smtp_port = free_port()
        sinks.extend(start_sinks(args.domains, smtp_port))
        raw = alone = None
        if args.raw:
            raw = smtp_source(f"{bulk_ip(0)}:{smtp_port}", args.messages, args.size)
        if args.client:
            alone = client_alone(f"{bulk_ip(0)}:{smtp_port}", args.messages, args.size, args.connections)
        url = rabbit.url("/")
        config_path = os.path.join(work, "mta.yaml")
        with open(config_path, "w") as fh:
            yaml.safe_dump(bench_config(url, dns.port, smtp_port, args.connections, prefetch=args.prefetch,
                                        tracking=args.tracking, queue_type=args.queue_type), fh)
        set_queue_version(rabbit, args.queue_type)
        asyncio.run(declare(url, config_path))
        t = time.monotonic()
        asyncio.run(prepublish(url, args.messages, args.size, args.domains, crlf=args.crlf))
        publish_s = time.monotonic() - t

        log = open(os.path.join(work, "mta.log"), "wb")
        others = {"broker": [rabbit.beam_pid()], "sinks": [p.pid for p in sinks]}
        others_cpu0 = {k: cpu_of(v) for k, v in others.items()}
        started = time.monotonic()
        profiler = ["-m", "cProfile", "-o", args.cprofile] if args.cprofile else []
        mta = subprocess.Popen([sys.executable, *profiler, "-m", "mta", "run", config_path, "--log-level", "WARNING"],
                               cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        spy = None
        if args.profile:
            fmt = "flamegraph" if args.profile.endswith(".svg") else "speedscope"
            spy = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "py-spy"), "record", "-p", str(mta.pid),
                                    "-o", args.profile, "-f", fmt, "-r", "200", "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        marked: list[tuple[int, float]] = []  # (results in, MTA CPU seconds) once a tenth is in
        asyncio.run(wait_published(url, args.messages, args.timeout,
                                   lambda count: marked.append((count, sum(family_stats(mta.pid)[:2])))))
        wall = time.monotonic() - started
        others_cpu = {k: cpu_of(v) - others_cpu0[k] for k, v in others.items()}
        user, system, peak, writer = family_stats(mta.pid)
        cpu = user + system
        if spy is not None:
            spy.send_signal(2)  # py-spy writes its file on SIGINT
            spy.wait(60)
        counts, accepted = asyncio.run(wait_results(url, args.messages, args.timeout))
        delivered = counts.get("delivered", 0)
        span = (max(accepted) - min(accepted)) if len(accepted) > 1 else float("nan")
        mta.terminate()
        mta.wait(60)
        pf = None
        if args.postfix:
            postfix = PrivatePostfix(os.path.join(work, "postfix"), free_port(),
                                     {f"d{i}.test": f"{bulk_ip(i)}:{smtp_port}" for i in range(args.domains)},
                                     args.connections)
            pf = run_postfix(postfix, args)
        print(f"machine: {os.cpu_count()} cores, {os.uname().sysname} {os.uname().release}; "
              f"python {sys.version.split()[0]}")
        print(f"messages {args.messages} x {args.size} B{' (CRLF)' if args.crlf else ''} to {args.domains} domains "
              f"(pre-published in {publish_s:.1f}s), {args.queue_type} queues")
        print(f"outcomes: {counts}")
        print(f"delivered msg/s (first to last SMTP acceptance): {delivered / span:,.0f}")
        print(f"delivered msg/s (MTA start to last result):      {delivered / wall:,.0f}")
        print(f"MTA CPU per message: {cpu / args.messages * 1e6:,.0f} us "
              f"(user {user / args.messages * 1e6:,.0f}, system {system / args.messages * 1e6:,.0f})   "
              f"peak RSS: {peak / 2**20:,.0f} MiB   of the CPU, the event store's writer process: "
              f"{writer / args.messages * 1e6:,.0f} us")
        print("meanwhile, CPU per message of " + ", ".join(
            f"the {k} {v / args.messages * 1e6:,.0f} us" for k, v in others_cpu.items())
            + f" (the run took {wall:.1f}s, the machine has {os.cpu_count()} cores)")
        running = None
        if marked and marked[0][0] < args.messages:
            count, cpu_then = marked[0]
            running = (cpu - cpu_then) / (args.messages - count)
            print(f"MTA CPU per message once running (start-up and the first {count} results left out): "
                  f"{running * 1e6:,.0f} us")
        mta_rate = delivered / span
        if raw is not None:
            print(f"smtp-source -> smtp-sink alone (20 sessions, one sink): {raw:,.0f} msg/s   "
                  f"MTA / raw: {mta_rate / raw:.2f}")
        if alone is not None:
            print(f"aiosmtplib alone ({args.connections} connections, one sink): {alone['msg_s']:,.0f} msg/s, "
                  f"CPU per message {alone['cpu_us']:,.0f} us   MTA CPU / aiosmtplib's: "
                  f"{(running or cpu / args.messages) * 1e6 / alone['cpu_us']:.2f}"
                  + (" (once running)" if running else ""))
        if pf is not None:
            print(f"Postfix, same messages drained from a filled queue: {pf['drain']:,.0f} msg/s "
                  f"(first to last status=sent: {pf['logged']:,.0f}); queue filled at {pf['inject']:,.0f} msg/s; "
                  f"Postfix CPU per message {pf['cpu'] * 1e6:,.0f} us")
            print(f"MTA / Postfix: {mta_rate / pf['drain']:.2f}")
        return 0 if delivered == args.messages else 1
    finally:
        if postfix is not None:
            postfix.stop()
        if mta is not None and mta.poll() is None:
            mta.terminate()
            try:
                mta.wait(60)
            except subprocess.TimeoutExpired:
                mta.kill()
        for sink in sinks:
            sink.terminate()
        dns.stop()
        if rabbit is not None:
            rabbit.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
