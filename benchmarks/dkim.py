"""End-to-end throughput with and without DKIM signing, on the same broker, DNS and sinks.

    .venv/bin/python benchmarks/dkim.py --messages 20000 --size 1024 --rounds 2
    .venv/bin/python benchmarks/dkim.py --algorithm ed25519-sha256
    .venv/bin/python benchmarks/dkim.py --micro          # signing alone, µs per message

The set-up is benchmarks/e2e.py's (private RabbitMQ node, dnsmasq serving d0.test ..,
one Postfix `smtp-sink` per MX address, messages pre-published From bench@sender.test);
each round runs the MTA once unsigned and once with a key for sender.test, each on a fresh
vhost, alternating so that load from elsewhere on the machine falls on both alike.
Printed per run: delivered msg/s from the first to the last SMTP acceptance, CPU per
message of the MTA process and of its signing workers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from statistics import median

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import yaml  # noqa: E402

from e2e import bench_config, declare, mime, prepublish, wait_results  # noqa: E402
from e2e import proc_stats as _proc_stats  # noqa: E402


def proc_stats(pid: int) -> tuple[float, int]:
    """(user+system CPU seconds, peak RSS bytes) of a live process."""
    user, system, peak = _proc_stats(pid)
    return user + system, peak
from tests.testbed.dns import Dnsmasq, bulk_ip, standard_zone  # noqa: E402
from tests.testbed.rabbit import RabbitNode  # noqa: E402
from tests.testbed.util import free_port, port_is_free  # noqa: E402


def children(pid: int) -> tuple[list[int], list[int]]:
    """The live children of `pid`: (signing workers, the others, such as the event store's writer)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            kids = [int(k) for k in fh.read().split()]
    except OSError:
        return [], []
    workers, others = [], []
    for kid in kids:
        try:
            with open(f"/proc/{kid}/cmdline", "rb") as fh:
                signing = b"mta.dkim.worker" in fh.read()
        except OSError:
            continue
        (workers if signing else others).append(kid)
    return workers, others


def wakeups(pids) -> int:
    """Times the signing workers slept waiting for a batch (voluntary context switches): with
    one batch at a time per worker, about the batches they signed."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as fh:
                total += sum(int(line.split()[1]) for line in fh if line.startswith("voluntary_ctxt_switches:"))
        except (OSError, ValueError):
            pass
    return total


def worker_start_cpu(key_file: str, algorithm: str, times: int = 3) -> float:
    """CPU seconds a signing worker spends starting (interpreter, imports, its keys) and
    ending, before it signs anything: the median of `times` starts."""
    import socket

    from mta.dkim.signature import load_key
    from mta.dkim.worker import frame

    key, _ = load_key("sender.test", "bench", key_file, algorithm)
    spent = []
    for _ in range(times):
        parent, child = socket.socketpair()
        proc = subprocess.Popen([sys.executable, "-m", "mta.dkim.worker", str(child.fileno())], cwd=ROOT,
                                pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL)
        child.close()
        parent.sendall(frame([(key.domain, key.selector, key.algorithm, key.pem())]))
        parent.close()  # the worker reads its keys, then EOF, and ends
        _, _, usage = os.wait4(proc.pid, 0)
        proc.returncode = 0
        spent.append(usage.ru_utime + usage.ru_stime)
    return sorted(spent)[len(spent) // 2]


def rabbit_ports() -> dict:
    """A node of its own beside other nodes on this machine: AMQP, distribution and epmd ports all free."""
    for _ in range(50):
        port = free_port(lo=20000, hi=32000)
        if port_is_free(port + 20000) and port_is_free(port + 21000):
            return {"port": port, "dist_port": port + 20000, "epmd_port": port + 21000,
                    "nodename": f"mtabenchdkim{port}@localhost"}
    raise SystemExit("no free ports for a private RabbitMQ node")


def cpu_of(pids) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += proc_stats(pid)[0]
        except OSError:
            pass
    return total


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_once(rabbit: RabbitNode, work: str, dns_port: int, smtp_port: int, args, key_file: str | None,
             label: str, sink_pids: list[int], start_cpu: float = 0.0) -> tuple[float, float, float | None]:
    vhost = f"bench-{label}-{time.monotonic_ns()}"
    url = rabbit.add_vhost(vhost)
    config = bench_config(url, dns_port, smtp_port, args.connections)
    if key_file:
        config["dkim"] = [{"domain": "sender.test", "selector": "bench", "key_file": key_file,
                           "algorithm": args.algorithm}]
    config_path = os.path.join(work, f"{label}.yaml")
    with open(config_path, "w") as fh:
        yaml.safe_dump(config, fh)
    asyncio.run(declare(url, config_path))
    asyncio.run(prepublish(url, args.messages, args.size, args.domains))
    log = open(os.path.join(work, f"{label}.log"), "wb")
    others = [rabbit.beam_pid() or 0] + sink_pids  # the broker and the sinks run before, during and after
    others_before, own_before = cpu_of(others), own_cpu()
    started = time.monotonic()
    mta = subprocess.Popen([sys.executable, "-m", "mta", "run", config_path, "--log-level", "WARNING"],
                           cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        counts, accepted = asyncio.run(wait_results(url, args.messages, args.timeout))
        wall = time.monotonic() - started
        cpu, peak = proc_stats(mta.pid)
        signing, other_kids = children(mta.pid)
        workers, kids, woken = cpu_of(signing), cpu_of(other_kids), wakeups(signing)
        rest = cpu_of(others) - others_before + own_cpu() - own_before
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
    rate = delivered / span
    load = os.getloadavg()[0]
    per = lambda seconds: seconds / args.messages * 1e6  # noqa: E731
    total = per(cpu + kids + workers + rest)
    print(f"{label:>9}: {rate:7,.0f} msg/s first-to-last acceptance, {delivered / wall:7,.0f} msg/s from start; "
          f"CPU per message: MTA {per(cpu):.0f} us + its event store writer {per(kids):.0f} us + signing workers "
          f"{per(workers):.0f} us + broker, sinks and load generator {per(rest):.0f} us = {total:.0f} us "
          f"(2 idle cores: {2e6 / total:,.0f} msg/s); peak RSS {peak / 2**20:.0f} MiB; load {load:.1f}; "
          f"outcomes {counts}", flush=True)
    if signing:
        net = per(workers - len(signing) * start_cpu)
        print(f"{'':>9}  signing: {len(signing)} workers woken {woken:,} times ({args.messages / max(woken, 1):.1f} "
              f"messages a wake-up); {net:.0f} us per signature net of the workers' start "
              f"({start_cpu * 1e3:.0f} ms each)",
              flush=True)
    if delivered != args.messages:
        raise SystemExit(f"{label}: only {delivered} of {args.messages} delivered")
    return rate, total, (per(workers - len(signing) * start_cpu) if signing else None)


def openssl_us(algorithm: str, seconds: int = 3) -> float:
    """µs per signature of `openssl speed` (user CPU time, one core) for the algorithm's key type."""
    name = "rsa2048" if algorithm == "rsa-sha256" else "ed25519"
    out = subprocess.run(["openssl", "speed", "-seconds", str(seconds), name], capture_output=True, text=True).stdout
    found = re.search(r"^rsa 2048 bits\s+\S+\s+\S+\s+([\d.]+)" if name == "rsa2048" else
                      r"^\s*253 bits EdDSA \(Ed25519\)\s+\S+\s+\S+\s+([\d.]+)", out, re.M)
    return 1e6 / float(found.group(1)) if found else float("nan")


def micro(args) -> int:
    """Signing alone, in this process, in CPU time (a busy machine stretches wall time): µs
    per message for each algorithm, beside the private-key operation alone and `openssl speed`."""
    from mta.dkim.signature import generate, init_keys, sign_batch

    message = mime(1, args.size).replace("\n", "\r\n").encode()
    digest = bytes(32)
    for algorithm in ("rsa-sha256", "ed25519-sha256"):
        key = generate("sender.test", "bench", algorithm)
        init_keys([(key.domain, key.selector, key.algorithm, key.pem())])
        batch = [(message, (0,))] * 20
        if algorithm == "rsa-sha256":
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.asymmetric import padding
            from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
            pad, prehashed = padding.PKCS1v15(), Prehashed(hashes.SHA256())
            raw = lambda: key.private.sign(digest, pad, prehashed)  # noqa: E731
        else:
            raw = lambda: key.private.sign(digest)  # noqa: E731
        signing, alone = cpu_us(lambda: sign_batch(batch, 1), len(batch)), cpu_us(raw, 1)
        openssl = openssl_us(algorithm)
        print(f"{algorithm}: {signing:.0f} us CPU per {len(message)}-byte message in a batch of {len(batch)} "
              f"(the private-key operation alone {alone:.0f} us; openssl speed {openssl:.0f} us: "
              f"{signing / openssl:.2f}x and {alone / openssl:.2f}x); load {os.getloadavg()[0]:.1f}", flush=True)
    return 0


def cpu_us(call, per_call: int, seconds: float = 3.0) -> float:
    started, count = time.process_time(), 0
    while time.process_time() - started < seconds:
        call()
        count += per_call
    return (time.process_time() - started) / count * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--size", type=int, default=1024, help="approximate MIME size in bytes")
    ap.add_argument("--domains", type=int, default=100)
    ap.add_argument("--connections", type=int, default=10, help="connection_limit per destination")
    ap.add_argument("--algorithm", default="rsa-sha256", choices=["rsa-sha256", "ed25519-sha256"])
    ap.add_argument("--rounds", type=int, default=1, help="unsigned/signed pairs to run")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--micro", action="store_true", help="only time the signature itself")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    if args.micro:
        return micro(args)

    from mta.dkim.signature import generate

    work = tempfile.mkdtemp(prefix="mta-bench-dkim-")
    os.chmod(work, 0o755)  # the broker runs as the rabbitmq user and must reach its directory
    key = generate("sender.test", "bench", args.algorithm)
    key_file = os.path.join(work, "sender.test.pem")
    with open(os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as fh:
        fh.write(key.pem())
    rabbit = RabbitNode(os.path.join(work, "rabbit"), **rabbit_ports())
    dns = Dnsmasq(records=standard_zone(args.domains), log_queries=False)
    sinks: list[subprocess.Popen] = []
    try:
        rabbit.start()
        dns.start()
        smtp_port = free_port()
        sink_bin = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        for i in range(args.domains):
            sinks.append(subprocess.Popen([sink_bin, "-u", "nobody", f"{bulk_ip(i)}:{smtp_port}", "1000"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; "
              f"{args.messages} x {args.size} B to {args.domains} domains; signing {args.algorithm}")
        start_cpu = worker_start_cpu(key_file, args.algorithm)
        pairs = []
        for r in range(args.rounds):
            unsigned = run_once(rabbit, work, dns.port, smtp_port, args, None, "unsigned", [p.pid for p in sinks])
            signed = run_once(rabbit, work, dns.port, smtp_port, args, key_file, "signed", [p.pid for p in sinks],
                              start_cpu)
            openssl = openssl_us(args.algorithm)
            pairs.append((unsigned, signed, openssl))
            print(f"pair {r + 1}: signed/unsigned {signed[0] / unsigned[0]:.0%} msg/s, {unsigned[1] / signed[1]:.0%} "
                  f"by CPU per message; workers {signed[2]:.0f} us per signature against `openssl speed` "
                  f"{openssl:.0f} us right after: {signed[2] / openssl:.2f}x", flush=True)
        print(f"medians of {len(pairs)}: signed/unsigned {median(s[0] / u[0] for u, s, _ in pairs):.0%} msg/s "
              f"(unsigned {median(u[0] for u, _, _ in pairs):,.0f}, signed {median(s[0] for _, s, _ in pairs):,.0f}), "
              f"{median(u[1] / s[1] for u, s, _ in pairs):.0%} by CPU per message; workers "
              f"{median(s[2] for _, s, _ in pairs):.0f} us per signature, "
              f"openssl {median(o for _, _, o in pairs):.0f} us, "
              f"ratio {median(s[2] / o for _, s, o in pairs):.2f}x")
        return 0
    finally:
        for sink in sinks:
            sink.terminate()
        for sink in sinks:
            sink.wait(10)
        dns.stop()
        rabbit.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
