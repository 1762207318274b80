"""One node without a store against one and two nodes with one (SPEC §6), same messages.

    .venv/bin/python benchmarks/cluster.py --messages 20000 --size 1024 --rounds 3

The set-up is benchmarks/e2e.py's (a private RabbitMQ node, dnsmasq serving d0.test ..,
one Postfix `smtp-sink` per MX address, pre-published messages, nothing read from
`mta.results` until every result is in) plus a private redis-server. Each round runs:

- A `alone`: one MTA process without a store;
- B `store`: one MTA process with the store (leases, shared rate slots, heartbeats, the
  shared record of final outcomes): what the store costs a node per message;
- C `two`: `mta run --processes 2` with the store: what a second node adds.

Each run gets a fresh vhost, a fresh rules file (so its own journal), ids of its own and an
emptied store; the order of A, B, C turns each round, so that load from elsewhere on the
machine falls on all alike. Printed per run: delivered msg/s from the first to the last
SMTP acceptance, CPU per message of all MTA processes (the whole run, and once running:
after the first tenth of results), of the redis-server, the broker and the sinks, and the
store's commands per message. At the end: medians and spread, B against A (store overhead
per message in µs and %) and C against A (throughput).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import yaml  # noqa: E402

from benchmarks.e2e import (bench_config, cpu_of, declare, prepublish, private_rabbit,  # noqa: E402
                            start_sinks, wait_published, wait_results)
from tests.testbed.dns import Dnsmasq, standard_zone  # noqa: E402
from tests.testbed.redisd import RedisServer  # noqa: E402
from tests.testbed.util import free_port  # noqa: E402

VARIANTS = {  # label: (with the store, processes)
    "alone": (False, 1),
    "store": (True, 1),
    "two": (True, 2),
}


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants (a supervisor's delivery processes)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(k) for k in fh.read().split())
        except OSError:
            pass
    return found


def switches(pids) -> int:
    """Context switches (voluntary and not) of the main threads of live processes: a wake-up of the event loop
    for every round trip to the store shows here."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def redis_info(port: int, section: str) -> dict[str, str]:
    """`INFO section` of the store as a dict (a RESP bulk string, read without a client library)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"INFO {section}\r\n".encode())
        f = s.makefile("rb")
        head = f.readline()
        if not head.startswith(b"$"):
            raise RuntimeError(f"INFO answered {head!r}")
        body = f.read(int(head[1:]) + 2).decode()
    info = {}
    for line in body.splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            info[k] = v
    return info


def store_calls(port: int) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT."""
    calls = {}
    for k, v in redis_info(port, "commandstats").items():
        fields = dict(kv.split("=", 1) for kv in v.split(","))
        calls[k.removeprefix("cmdstat_")] = int(fields["calls"])
    return calls


def machine() -> str:
    model = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (f"{os.cpu_count()} cores ({model}), {os.uname().sysname} {os.uname().release}, "
            f"python {sys.version.split()[0]}")


def run_once(rabbit, redis: RedisServer, work: str, dns_port: int, smtp_port: int, sink_pids: list[int],
             args, label: str, n: int) -> dict:
    with_store, processes = VARIANTS[label]
    tag = f"{label}{n}"
    vhost = f"bench-{tag}-{time.monotonic_ns()}"
    url = rabbit.add_vhost(vhost)
    config = bench_config(url, dns_port, smtp_port, args.connections, prefetch=args.prefetch)
    if with_store:
        config["cluster"] = {"store": redis.url, "node": f"bench-{tag}"}
    config_path = os.path.join(work, f"{tag}.yaml")
    with open(config_path, "w") as fh:
        yaml.safe_dump(config, fh)
    redis.flush()
    redis.command("CONFIG", "RESETSTAT")
    asyncio.run(declare(url, config_path))
    asyncio.run(prepublish(url, args.messages, args.size, args.domains, prefix=f"{tag}-"))

    load = os.getloadavg()[0]
    others = {"redis": [redis.proc.pid], "broker": [rabbit.beam_pid()], "sinks": sink_pids}
    before = {k: cpu_of(v) for k, v in others.items()}
    log = open(os.path.join(work, f"{tag}.log"), "wb")
    command = [sys.executable, "-m", "mta", "run", config_path, "--log-level", "WARNING"]
    if processes > 1:
        command += ["--processes", str(processes)]
    started = time.monotonic()
    mta = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    spy = None
    if args.profile and label == args.profile_variant:
        spy = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "py-spy"), "record", "-p",
                                str(mta.pid), "--subprocesses", "-o", f"{args.profile}.{tag}.json",
                                "-f", "speedscope", "-r", "200", "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marked: list[tuple[int, float]] = []
    try:
        asyncio.run(wait_published(url, args.messages, args.timeout,
                                   lambda count: marked.append((count, cpu_of(process_tree(mta.pid))))))
        wall = time.monotonic() - started
        pids = process_tree(mta.pid)
        cpu = cpu_of(pids)
        woken = switches(pids)
        used = {k: cpu_of(v) - before[k] for k, v in others.items()}
        calls = store_calls(redis.port) if with_store else {}
        if spy is not None:
            spy.send_signal(2)  # py-spy writes its file on SIGINT
            spy.wait(60)
        counts, accepted = asyncio.run(wait_results(url, args.messages, args.timeout))
    finally:
        mta.terminate()
        try:
            mta.wait(60)
        except subprocess.TimeoutExpired:
            mta.kill()
        log.close()
        rabbit.delete_vhost(vhost)
    delivered = counts.get("delivered", 0)
    span = (max(accepted) - min(accepted)) if len(accepted) > 1 else float("nan")
    per = lambda seconds: seconds / args.messages * 1e6  # noqa: E731
    running = float("nan")
    if marked and marked[0][0] < args.messages:
        count, cpu_then = marked[0]
        running = (cpu - cpu_then) / (args.messages - count) * 1e6
    row = {"label": label, "rate": delivered / span, "from_start": delivered / wall, "cpu": per(cpu),
           "running": running, "redis": per(used["redis"]), "broker": per(used["broker"]),
           "sinks": per(used["sinks"]), "processes": len(pids), "load": load,
           "switches": woken / args.messages,
           "calls": sum(calls.values()) / args.messages, "by_command": calls}
    top = ", ".join(f"{k} {v / args.messages:.2f}" for k, v in sorted(calls.items(), key=lambda kv: -kv[1])[:5])
    print(f"{label:>5} (round {n + 1}, load {load:.1f}): {row['rate']:6,.0f} msg/s first-to-last acceptance, "
          f"{row['from_start']:6,.0f} from start; CPU per message: MTA {row['cpu']:.0f} us "
          f"({len(pids)} process(es); {running:.0f} once running), redis {row['redis']:.0f}, "
          f"broker {row['broker']:.0f}, sinks {row['sinks']:.0f}; MTA context switches per message "
          f"{row['switches']:.2f}; store commands per message (Lua's own included) "
          f"{row['calls']:.2f}{' (' + top + ')' if top else ''}; outcomes {counts}", flush=True)
    if delivered != args.messages:
        raise SystemExit(f"{label}: only {delivered} of {args.messages} delivered (log: {log.name})")
    return row


def summary(rows: list[dict]) -> None:
    def med(label: str, key: str) -> tuple[float, float, float]:
        values = [r[key] for r in rows if r["label"] == label]
        return statistics.median(values), min(values), max(values)

    print("\nmedian (min-max) per variant:")
    for label in VARIANTS:
        if not any(r["label"] == label for r in rows):
            continue
        parts = []
        for key, name, unit in (("rate", "msg/s", ""), ("cpu", "MTA CPU", " us"), ("running", "once running", " us"),
                                ("redis", "redis CPU", " us"), ("broker", "broker", " us"), ("sinks", "sinks", " us"),
                                ("switches", "MTA context switches/msg", ""), ("calls", "store commands/msg", "")):
            m, lo, hi = med(label, key)
            fmt = ",.2f" if key in ("calls", "switches") else ",.0f"
            parts.append(f"{name} {m:{fmt}}{unit} ({lo:{fmt}}-{hi:{fmt}})")
        print(f"  {label:>5}: " + "; ".join(parts))
    if not any(r["label"] == "alone" for r in rows):
        return
    a_rate, a_cpu, a_redis = med("alone", "rate")[0], med("alone", "cpu")[0], med("alone", "redis")[0]
    if any(r["label"] == "store" for r in rows):
        b_rate, b_cpu, b_redis = med("store", "rate")[0], med("store", "cpu")[0], med("store", "redis")[0]
        print(f"B/A (the store's cost to one node): MTA CPU {b_cpu - a_cpu:+.0f} us per message "
              f"({(b_cpu / a_cpu - 1):+.0%}), plus redis {b_redis - a_redis:.0f} us; "
              f"msg/s {b_rate / a_rate:.2f}x")
        pairs = rounds_paired(rows, "store", "cpu")
        if pairs:
            print(f"  per round (B - A, MTA CPU us): {', '.join(f'{d:+.0f}' for d in pairs)}")
    if any(r["label"] == "two" for r in rows):
        c_rate, c_cpu = med("two", "rate")[0], med("two", "cpu")[0]
        print(f"C/A (a second node, {os.cpu_count()} cores shared with broker, sinks and redis): "
              f"msg/s {c_rate / a_rate:.2f}x; MTA CPU {c_cpu - a_cpu:+.0f} us per message "
              f"({(c_cpu / a_cpu - 1):+.0%})")


def rounds_paired(rows: list[dict], label: str, key: str) -> list[float]:
    """`label`'s figure minus A's, round by round (the rows come in rounds of len(VARIANTS))."""
    out, round_a, round_x = [], [], []
    for r in rows:
        (round_a if r["label"] == "alone" else round_x if r["label"] == label else []).append(r[key])
    for a, x in zip(round_a, round_x):
        out.append(x - a)
    return out


def micro(args) -> int:
    """The client's side of the store's calls, in this process, against a private
    redis-server: CPU per shared rate slot fetched with a round trip (what a message costs
    when its destination's batch of slots has gone stale), per slot taken from a batch in
    hand, and per final outcome written through the record's buffer."""
    import uvloop

    from mta.cluster.rates import Rates
    from mta.cluster.record import SharedRecord
    from mta.cluster.store import Store
    from shaper.units import Rate

    redis = RedisServer()
    redis.start()
    try:
        async def measure() -> None:
            store = Store(redis.url)
            rates = Rates(store, lambda: 1)
            record = SharedRecord(store, None, time.time)
            fast, slow = Rate(1_000_000, 1.0), Rate(100, 1.0)  # the benchmark's rate; one that binds
            for name, rate, n, fresh in (("a slot with a round trip (rate 1,000,000/s)", fast, 5000, True),
                                         ("a slot with a round trip (rate 100/s)", slow, 5000, True),
                                         ("a slot of one key after another (rate 1,000,000/s: 20 a round trip)", fast, 5000, False)):
                await rates.slot("warm", rate, 1)
                t, c = time.perf_counter(), time.process_time()
                for i in range(n):
                    await rates.slot(f"micro{i}" if fresh else "micro", rate, 1)
                cpu, wall = (time.process_time() - c) / n, (time.perf_counter() - t) / n
                print(f"{name}: {cpu * 1e6:.0f} us CPU, {wall * 1e6:.0f} us wall", flush=True)
            n = 20000
            body = b"x" * 300
            t, c = time.perf_counter(), time.process_time()
            for i in range(0, n, 100):  # a flush every 100 outcomes (50 ms at 2,000 msg/s)
                for j in range(i, i + 100):
                    record.final(f"id{j}", "delivered", body)
                    record.published(f"id{j}")
                await record.flush()
            cpu = (time.process_time() - c) / n
            print(f"a final outcome through the shared record (final + published, flushed per 100): "
                  f"{cpu * 1e6:.1f} us CPU", flush=True)
            await store.close()

        uvloop.run(measure())
    finally:
        redis.remove()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--size", type=int, default=1024, help="approximate MIME size in bytes")
    ap.add_argument("--domains", type=int, default=100)
    ap.add_argument("--connections", type=int, default=10, help="connection_limit per destination (across nodes)")
    ap.add_argument("--prefetch", type=int, default=1000, help="broker.prefetch of the bulk lane (per node)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", nargs="+", choices=list(VARIANTS), help="run only these variants")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--profile", metavar="PREFIX",
                    help="record one variant's MTA processes with py-spy into PREFIX.<run>.json (speedscope)")
    ap.add_argument("--profile-variant", default="store", choices=list(VARIANTS))
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--micro", action="store_true", help="only time the client's side of the store's calls")
    args = ap.parse_args()
    if args.micro:
        return micro(args)
    labels = args.only or list(VARIANTS)

    work = tempfile.mkdtemp(prefix="mta-bench-cluster-")
    os.chmod(work, 0o755)  # the broker runs as the rabbitmq user and must reach its directory
    rabbit = None
    redis = RedisServer()
    dns = Dnsmasq(records=standard_zone(args.domains), log_queries=False)
    sinks: list[subprocess.Popen] = []
    try:
        rabbit = private_rabbit(work, "mtabenchcluster")
        redis.start()
        dns.start()
        smtp_port = free_port()
        sinks.extend(start_sinks(args.domains, smtp_port))
        print(f"machine: {machine()}; redis {redis_info(redis.port, 'server').get('redis_version', '?')}; "
              f"{args.messages} x {args.size} B to {args.domains} domains, {args.connections} connections "
              f"each, {args.rounds} round(s)", flush=True)
        rows = []
        for n in range(args.rounds):
            order = labels[n % len(labels):] + labels[:n % len(labels)]
            for label in order:
                rows.append(run_once(rabbit, redis, work, dns.port, smtp_port, [p.pid for p in sinks],
                                     args, label, n))
        summary(rows)
        return 0
    finally:
        for sink in sinks:
            sink.terminate()
        for sink in sinks:
            try:
                sink.wait(10)
            except subprocess.TimeoutExpired:
                sink.kill()
        dns.stop()
        redis.remove()
        if rabbit is not None:
            rabbit.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
