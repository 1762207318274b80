"""SMTP submission (SPEC §7): accepted msg/s and CPU per message, side by side with Postfix.

    nice -n -15 .venv/bin/python benchmarks/submission.py --messages 10000 --clients 10 50

N parallel clients (one asyncio process, uvloop) each open one connection, EHLO, STARTTLS,
EHLO, AUTH PLAIN once, then MAIL/RCPT/DATA for ~1 KB messages (unique, CRLF, one recipient)
on the same connection until the shared count is used up, one command at a time as common
client libraries do (`--pipelining` sends MAIL, RCPT and DATA in one write). Only a 250
after the data counts; every other reply is counted by its text and printed.

Four servers take the same load, one after the other, each case twice (the repetitions
interleaved so that the shared machine's noise falls on all of them):

1. **listeners**: the MTA's submission listeners alone, without its engine: what `mta run`
   starts beside the engine (mta.submission.service.Listeners, uvloop), in a process of its
   own started by this script (`--listeners-only CONFIG`), because `mta run` always runs the
   engine too and the engine consumes the lanes. Nobody consumes the lane here: this is the
   acceptance path alone (TLS, AUTH, policy, a confirmed publish per message, the 250),
   the same work Postfix's `smtpd` + `cleanup` do to put a message in its queue.
2. **mta run**: `mta run CONFIG`, listeners and engine in one process, the engine
   delivering what comes in to a Postfix `smtp-sink` (dnsmasq serves d0.test's MX, as in
   e2e.py). The process's CPU then includes delivery: shown for the acceptance window
   (first client connect to last 250, with whatever the engine delivered meanwhile) and
   until every accepted message has its final result (acceptance + delivery, per message).
3. **Postfix**: a private Debian Postfix (benchmarks/postfix.py), `smtpd` offering STARTTLS
   with the same certificate and, with Cyrus SASL (`sasl2-bin` installed for `saslpasswd2`,
   an sasldb in the work directory), AUTH PLAIN required for relaying
   (`smtpd_tls_auth_only`); without `saslpasswd2` it runs without AUTH and says so (a
   lighter job for Postfix). **postfix**: every message goes to the hold queue at the end
   of DATA (`smtpd_end_of_data_restrictions = check_client_access static:HOLD`), so only
   smtpd and cleanup work on it, as only the listeners do in 1.: the ratios are against
   this one. **postfix defer**: into the active queue with `defer_transports = smtp`, the
   queue manager deferring each message (and the `defer` service logging it): more work
   after the 250, none of it delivery. Postfix checks no sender domain or From: (the
   MTA's source does). CPU: all the instance's processes (smtpd, cleanup, qmgr,
   trivial-rewrite..., reaped children through the master).

`--processes N` runs N listener processes on the one address (SO_REUSEPORT, as
`mta run --processes N` does) and `mta run --processes N` with a private redis-server as
its shared store (it refuses to start without one): one event loop uses one core.

msg/s is from the first to the last 250 after DATA. CPU per message is user+system of the
server's processes from the first connect to the last 250, divided by the accepted
messages. For the MTA, also the share of that time its process was ready to run but
waited for a core (/proc/PID/task/*/schedstat, summed over its processes): near 100%
minus its CPU share, it was CPU-bound and the machine's other work took the core. The broker's
CPU in that window is shown apart for the MTA (the MTA's queue is RabbitMQ; Postfix's
is its own queue files, counted in its CPU). The clients' own CPU is shown too: on a
2-core machine they compete with the server and the broker for the same cores.

`--baseline DIR` adds the listeners of another checkout (say a worktree of the commit
before a change), as "listeners base" in the same run, interleaved with the others: a
before and after under the same load of the shared machine.

`--profile DIR` records the listeners process (and the `mta run` one) with py-spy
(speedscope JSON per case; summarise with benchmarks/spysummary.py).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import aio_pika  # noqa: E402
import yaml  # noqa: E402

from benchmarks.cluster import machine  # noqa: E402
from benchmarks.e2e import bench_config, cpu_of, private_rabbit, start_sinks  # noqa: E402
from benchmarks.postfix import PrivatePostfix  # noqa: E402
from mta.broker.topology import RESULTS, lane_queue  # noqa: E402
from tests.testbed.dns import Dnsmasq, bulk_ip, standard_zone  # noqa: E402
from tests.testbed.redisd import RedisServer  # noqa: E402
from tests.testbed.tls import TestCA  # noqa: E402
from tests.testbed.util import free_port  # noqa: E402

USER, PASSWORD = "webshop", "bench submission password"
SENDER = "orders@sender.test"
SASLPASSWD2 = shutil.which("saslpasswd2") or "/usr/sbin/saslpasswd2"
POSTSUPER = shutil.which("postsuper") or "/usr/sbin/postsuper"
SASL_REALM = "bench.test"


def message(i: int, size: int = 1024) -> bytes:
    """A unique message of about `size` octets, CRLF line ends, no line starting with a dot
    (the MTA derives a submission id from the content: equal messages would be one)."""
    head = (f"From: Shop <{SENDER}>\r\nTo: <user{i}@d0.test>\r\nSubject: order {i}\r\n"
            f"Message-ID: <s{i}.{time.time_ns()}@sender.test>\r\nDate: Wed, 02 Dec 2026 12:00:00 +0000\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
    line = "x" * 76 + "\r\n"
    return (head + line * max(1, (size - len(head)) // len(line))).encode()


# ---- the clients


@dataclass
class ClientRun:
    accepted: int = 0
    first: float = float("inf")  # monotonic time of the first 250 after DATA
    last: float = 0.0
    start: float = 0.0
    other: collections.Counter = field(default_factory=collections.Counter)  # "stage: reply" -> count
    cpu: float = 0.0  # the client process's user+system seconds
    waits: list = field(default_factory=list)  # seconds from the data's last octet to its 250
    waited: float | None = None  # seconds the server process waited for a core (the MTA's)

    def wait_ms(self, q: float) -> float:
        waits = sorted(self.waits)
        return 1000 * waits[min(len(waits) - 1, int(q * len(waits)))] if waits else float("nan")

    def note(self, stage: str, text: bytes) -> None:
        self.other[f"{stage}: {text.decode(errors='replace').strip()[:120]}"] += 1


async def _reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        lines.append(line)
        if line[3:4] != b"-":
            return int(line[:3]), b"".join(lines)


async def _session(port: int, tls, auth: bool, todo, run: ClientRun, pipelining: bool) -> None:
    writer = None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        code, text = await _reply(reader)
        if code != 220:
            run.note("banner", text)
            return
        writer.write(b"EHLO client.bench.test\r\n")
        code, text = await _reply(reader)
        writer.write(b"STARTTLS\r\n")
        code, text = await _reply(reader)
        if code != 220:
            run.note("STARTTLS", text)
            return
        await writer.start_tls(tls)
        writer.write(b"EHLO client.bench.test\r\n")
        code, text = await _reply(reader)
        if auth:
            blob = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
            writer.write(f"AUTH PLAIN {blob}\r\n".encode())
            code, text = await _reply(reader)
            if code != 235:
                run.note("AUTH", text)
                return
        for i, data in todo:
            envelope = (f"MAIL FROM:<{SENDER}>\r\n".encode(), f"RCPT TO:<user{i}@d0.test>\r\n".encode(), b"DATA\r\n")
            if pipelining:
                writer.write(b"".join(envelope))
                replies = [await _reply(reader) for _ in envelope]
            else:
                replies = []
                for command in envelope:
                    writer.write(command)
                    replies.append(await _reply(reader))
                    if replies[-1][0] >= 400:
                        break
            bad = next((n for n, (code, _) in enumerate(replies) if code != (354 if n == 2 else 250)), None)
            if bad is not None:
                run.note(("MAIL", "RCPT", "DATA")[bad], replies[bad][1])
                if replies[-1][0] == 354:  # pipelined: the data must go, and is then refused or not
                    writer.write(data + b".\r\n")
                    await _reply(reader)
                writer.write(b"RSET\r\n")
                await _reply(reader)
                continue
            writer.write(data + b".\r\n")
            sent = time.monotonic()
            code, text = await _reply(reader)
            if code == 250:
                now = time.monotonic()
                run.waits.append(now - sent)
                run.accepted += 1
                run.first = min(run.first, now)
                run.last = now
            else:
                run.note("after DATA", text)
        writer.write(b"QUIT\r\n")
        await _reply(reader)
    except (ConnectionError, OSError) as exc:
        run.note("connection", str(exc).encode())
    finally:
        if writer is not None:
            writer.close()


def run_clients(port: int, clients: int, messages: list[tuple[int, bytes]], *, auth: bool = True,
                pipelining: bool = False) -> ClientRun:
    """All messages over `clients` connections; returns when every session has ended."""
    import ssl

    import uvloop

    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE  # a throw-away certificate; the handshake is what costs
    todo = iter(messages)  # shared: a session takes the next message when it is free
    run = ClientRun()

    async def all_sessions() -> None:
        await asyncio.gather(*(_session(port, tls, auth, todo, run, pipelining) for _ in range(clients)))

    cpu0 = sum(os.times()[:2])
    run.start = time.monotonic()
    uvloop.run(all_sessions())
    run.cpu = sum(os.times()[:2]) - cpu0
    return run


def until_accepted(port: int, auth: bool, sessions: int = 1, timeout: float = 60) -> None:
    """A message on each of `sessions` connections, again until all are accepted: the
    server is listening and (the MTA) has its broker connection."""
    deadline = time.monotonic() + timeout
    while True:
        run = run_clients(port, sessions, [(-1 - i, message(-1 - i)) for i in range(sessions)], auth=auth)
        if run.accepted == sessions:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"no 250 on port {port} within {timeout:.0f}s: {dict(run.other)}")
        time.sleep(0.5)


# ---- the servers


def listeners_only(path: str) -> int:
    """The MTA's submission listeners without the engine, until SIGTERM."""
    import logging

    import uvloop

    from mta.config import load_config
    from mta.submission.service import Listeners

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(path)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        listeners = Listeners(config, config_path=path)
        await listeners.start()
        await listeners.stop_on(stop)

    uvloop.run(serve())
    return 0


def mta_config(url: str, dns_port: int, smtp_port: int, port: int, cert: str, key: str, lane: str) -> dict:
    config = bench_config(url, dns_port, smtp_port, 20)
    config["listeners"] = [{"address": f"127.0.0.1:{port}", "tls": "starttls", "cert_file": cert, "key_file": key}]
    config["sources"] = {"webshop": {"users": [{"username": USER, "password_env": "WEBSHOP_SMTP_PASSWORD"}],
                                     "allow_ips": ["127.0.0.0/8"], "sender_domains": ["sender.test"],
                                     "lane": lane}}
    return config


class MtaServer:
    """The MTA under test: its listeners alone (`processes` of them on one address, as
    `mta run --processes N` has), or `mta run` (with `--processes N` when N > 1)."""

    def __init__(self, name: str, work: str, config_path: str, url: str, port: int, lane: str, engine: bool,
                 processes: int = 1, root: str = ROOT):
        self.name, self.work, self.config_path, self.url, self.port = name, work, config_path, url, port
        self.lane, self.engine, self.processes = lane, engine, processes
        self.root = root  # the checkout whose code runs
        self.procs: list[subprocess.Popen] = []
        self.auth = True

    def start(self) -> None:
        if self.engine:
            commands = [["-m", "mta", "run", self.config_path, "--log-level", "WARNING"]
                        + (["--processes", str(self.processes)] if self.processes > 1 else [])]
        else:
            script = os.path.join(self.root, "benchmarks", "submission.py")
            commands = [[script, "--listeners-only", self.config_path]] * self.processes
        log = open(os.path.join(self.work, f"{self.name.replace(' ', '-')}.log"), "ab")
        env = dict(os.environ, WEBSHOP_SMTP_PASSWORD=PASSWORD, PYTHONPATH=self.root)
        for command in commands:
            self.procs.append(subprocess.Popen([sys.executable, *command], cwd=self.root, env=env, stdout=log,
                                               stderr=subprocess.STDOUT))
        sessions = 4 * self.processes  # the kernel spreads them: every process has its broker connection
        until_accepted(self.port, True, sessions)
        self.after_case(sessions)

    def pids(self) -> list[int]:
        """The processes' ids, and the children of `mta run --processes N`'s supervisor."""
        pids = [p.pid for p in self.procs]
        if self.engine and self.processes > 1:
            for entry in os.listdir("/proc"):
                try:
                    with open(f"/proc/{entry}/stat") as fh:
                        if int(fh.read().rsplit(")", 1)[1].split()[1]) in pids[:1]:
                            pids.append(int(entry))
                except (OSError, ValueError, IndexError):
                    pass
        return pids

    def cpu(self) -> float:
        return cpu_of(self.pids())

    def runqueue(self) -> float:
        """Seconds the processes were ready to run and waited for a core (all threads)."""
        total = 0
        for pid in self.pids():
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                try:
                    with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                        total += int(fh.read().split()[1])
                except OSError:
                    pass
        return total / 1e9

    def after_case(self, accepted: int) -> float | None:
        """Wait for the engine to give every accepted message its final result (the CPU
        then), and empty the lane and the results, so the next case starts alike."""
        cpu = None
        if self.engine:
            asyncio.run(wait_results(self.url, accepted, 600))
            cpu = self.cpu()
        asyncio.run(purge(self.url, [lane_queue(self.lane), RESULTS]))
        return cpu

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.returncode not in (0, -signal.SIGTERM):
                print(f"warning: {self.name} exited with {proc.returncode}; see its log in {self.work}")
        self.procs = []


class TlsPostfix(PrivatePostfix):
    """PrivatePostfix whose smtpd offers STARTTLS with our certificate and, when Cyrus SASL's
    `saslpasswd2` is there, takes AUTH PLAIN (only under TLS) and relays only for it."""

    def __init__(self, root: str, port: int, routes: dict[str, str], cert: str, key: str, hold: bool):
        super().__init__(root, port, routes, 10)
        self.cert, self.key, self.hold = cert, key, hold
        self.auth = os.access(SASLPASSWD2, os.X_OK)

    def _main_cf(self) -> str:
        lines = [line for line in super()._main_cf().splitlines()
                 if not line.startswith(("smtpd_tls_security_level", "smtpd_relay_restrictions"))]
        lines += ["smtpd_tls_security_level = may", f"smtpd_tls_cert_file = {self.cert}",
                  f"smtpd_tls_key_file = {self.key}"]
        if self.hold:  # straight into the hold queue: the queue manager never sees them
            lines += ["smtpd_end_of_data_restrictions = check_client_access static:HOLD"]
        if self.auth:
            lines += ["smtpd_sasl_auth_enable = yes", "smtpd_sasl_type = cyrus", "smtpd_sasl_path = smtpd",
                      f"cyrus_sasl_config_path = {self.etc}", f"smtpd_sasl_local_domain = {SASL_REALM}",
                      "smtpd_tls_auth_only = yes", "smtpd_sasl_security_options = noanonymous",
                      "smtpd_relay_restrictions = permit_sasl_authenticated, reject"]
        else:
            lines += ["smtpd_relay_restrictions = permit_mynetworks, reject"]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        if self.auth:
            os.makedirs(self.etc, exist_ok=True)
            os.makedirs(os.path.join(self.root, "sasl"), exist_ok=True)
            sasldb = os.path.join(self.root, "sasl", "sasldb2")  # not in etc: Postfix wants root's files there
            subprocess.run([SASLPASSWD2, "-f", sasldb, "-c", "-p", "-u", SASL_REALM, USER],
                           input=PASSWORD.encode(), check=True)
            shutil.chown(sasldb, "postfix")
            # Debian's Postfix reads $cyrus_sasl_config_path/sasl/smtpd.conf
            os.makedirs(os.path.join(self.etc, "sasl"), exist_ok=True)
            with open(os.path.join(self.etc, "sasl", "smtpd.conf"), "w") as fh:
                fh.write(f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\n"
                         f"sasldb_path: {sasldb}\n")
        super().start()

    def empty(self) -> None:
        """Delete every queued message (between cases)."""
        subprocess.run([POSTSUPER, "-c", self.etc, "-d", "ALL"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class PostfixServer:
    engine = False

    def __init__(self, name: str, postfix: TlsPostfix):
        self.name, self.postfix = name, postfix
        self.port = postfix.port
        self.auth = postfix.auth

    def start(self) -> None:
        self.postfix.start()
        until_accepted(self.port, self.auth)
        self.after_case(1)

    def cpu(self) -> float:
        return self.postfix.cpu_seconds()

    def after_case(self, accepted: int) -> None:
        self.postfix.empty()

    def stop(self) -> None:
        self.postfix.stop()


# ---- the broker


async def purge(url: str, queues: list[str]) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for name in queues:
            queue = await channel.declare_queue(name, passive=True)
            await queue.purge()


async def wait_results(url: str, n: int, timeout: float) -> None:
    """Until `mta.results` holds n final results or more (counted, not read)."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            queue = await channel.declare_queue(RESULTS, passive=True)
            if queue.declaration_result.message_count >= n:
                return
            await asyncio.sleep(0.05)
    raise TimeoutError(f"fewer than {n} results after {timeout:.0f}s")


# ---- one case


@dataclass
class Case:
    server: str
    clients: int
    repetition: int
    rate: float
    cpu_us: float
    accepted: int
    run: ClientRun
    wall: float
    broker_us: float | None = None
    total_cpu_us: float | None = None  # mta run: acceptance and delivery, per message


def one_case(server, clients: int, n: int, repetition: int, args, broker_pid: int | None,
             spy_to: str | None) -> Case:
    messages = [(i, message(i, args.size)) for i in range(n)]
    spy = None
    if spy_to and isinstance(server, MtaServer):
        spy = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "py-spy"), "record",
                                "-p", str(server.pids()[-1]), "-o", spy_to, "-f", "speedscope", "-r", "200",
                                "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
    cpu0 = server.cpu()
    waited0 = server.runqueue() if isinstance(server, MtaServer) else None
    broker0 = cpu_of([broker_pid]) if broker_pid else 0.0
    run = run_clients(server.port, clients, messages, auth=server.auth, pipelining=args.pipelining)
    cpu = server.cpu() - cpu0
    waited = server.runqueue() - waited0 if waited0 is not None else None
    broker = cpu_of([broker_pid]) - broker0 if broker_pid else None
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    wall = run.last - run.start
    accepted = max(run.accepted, 1)
    run.waited = waited
    case = Case(server.name, clients, repetition, run.accepted / (run.last - run.first) if run.accepted > 1 else 0.0,
                cpu / accepted * 1e6, run.accepted, run, wall,
                broker / accepted * 1e6 if broker is not None else None)
    done_cpu = server.after_case(run.accepted)
    if done_cpu is not None:
        case.total_cpu_us = (done_cpu - cpu0) / accepted * 1e6
    other = ", ".join(f"{k} x{v}" for k, v in run.other.most_common())
    print(f"  {server.name:10s} {clients:3d} clients, run {repetition}: {run.accepted}/{n} accepted, "
          f"{case.rate:,.0f} msg/s, CPU {case.cpu_us:,.0f} us/msg"
          + (f" (until delivered {case.total_cpu_us:,.0f})" if case.total_cpu_us is not None else "")
          + (f", broker {case.broker_us:,.0f} us/msg" if case.broker_us is not None else "")
          + (f"; ready but waiting for a core {waited / wall:.0%} of the time" if waited is not None else "")
          + f"; 250 after the data in {run.wait_ms(0.5):.1f} ms (median), {run.wait_ms(0.99):.1f} ms (99%)"
          + f"; clients' CPU {run.cpu / accepted * 1e6:,.0f} us/msg = {run.cpu / wall:.0%} of a core"
          + (f"; other replies: {other}" if other else ""), flush=True)
    return case


def table(cases: list[Case], clients: list[int], repetitions: int, servers: list[str]) -> str:
    """One row per client count and run: each server's msg/s and CPU per message (the MTA's
    with the broker's beside it), and each MTA server's rate over Postfix's."""
    by = {(c.server, c.clients, c.repetition): c for c in cases}
    mtas = [s for s in servers if not s.startswith("postfix")]
    base = next((s for s in ("postfix", "postfix defer") if s in servers), None)
    head = ["clients", "run"]
    for s in servers:
        head += [f"{s} msg/s", f"{s} CPU us/msg"]
        if s == "mta run":
            head += ["mta run CPU us/msg until delivered"]
        if s in mtas:
            head += [f"{s} broker us/msg", f"{s} waiting for a core"]
    head += [f"{s} / {base}" for s in mtas if base]
    rows = []
    for n in clients:
        for r in range(1, repetitions + 1):
            row = [str(n), str(r)]
            for s in servers:
                c = by.get((s, n, r))
                row += [f"{c.rate:,.0f}", f"{c.cpu_us:,.0f}"] if c else ["-", "-"]
                if s == "mta run":
                    row += [f"{c.total_cpu_us:,.0f}" if c and c.total_cpu_us is not None else "-"]
                if s in mtas:
                    row += [f"{c.broker_us:,.0f}" if c and c.broker_us is not None else "-",
                            f"{c.run.waited / c.wall:.0%}" if c and c.run.waited is not None else "-"]
            if base:
                pf = by.get((base, n, r))
                for s in mtas:
                    c = by.get((s, n, r))
                    row += [f"{c.rate / pf.rate:.2f}x" if c and pf and pf.rate else "-"]
            rows.append(row)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=10000, help="per case")
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--size", type=int, default=1024, help="approximate message size in bytes")
    ap.add_argument("--repetitions", type=int, default=2)
    ap.add_argument("--servers", nargs="+", default=["listeners", "mta run", "postfix", "postfix defer"],
                    choices=["listeners", "mta run", "postfix", "postfix defer"],
                    help="postfix: into its hold queue; postfix defer: into its queue, deferred by the queue manager")
    ap.add_argument("--processes", type=int, default=1,
                    help="MTA processes on the listening address (`mta run --processes N`)")
    ap.add_argument("--lane", default="single", choices=["single", "bulk"], help="the source's lane")
    ap.add_argument("--pipelining", action="store_true", help="MAIL, RCPT and DATA in one write")
    ap.add_argument("--baseline", metavar="DIR",
                    help="also the listeners of the checkout in DIR (\"listeners base\"), interleaved")
    ap.add_argument("--profile", metavar="DIR", help="py-spy speedscope profiles of the MTA processes into DIR")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--listeners-only", metavar="CONFIG", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.listeners_only:
        return listeners_only(args.listeners_only)

    work = tempfile.mkdtemp(prefix="mta-subbench-")
    os.chmod(work, 0o755)  # the broker and Postfix run as their own users and must reach it
    rabbit = None
    dns = Dnsmasq(records=standard_zone(1), log_queries=False)
    sinks: list[subprocess.Popen] = []
    redis = None
    cases: list[Case] = []
    print(f"machine: {machine()}; load {os.getloadavg()[0]:.2f}", flush=True)
    try:
        cert, key = TestCA(work).issue(names=["bench.test"], ips=["127.0.0.1"])
        rabbit = private_rabbit(work, "mtasubbench")
        dns.start()
        smtp_port = free_port()
        sinks.extend(start_sinks(1, smtp_port))
        servers = {}
        if args.processes > 1 and "mta run" in args.servers:  # its processes share their limits
            redis = RedisServer()
            redis.start()
        names = list(args.servers)
        if args.baseline:  # beside the listeners, before Postfix
            names.insert(names.index("listeners") + 1 if "listeners" in names else 0, "listeners base")
        for name in names:
            if name.startswith("postfix"):
                postfix = TlsPostfix(os.path.join(work, name.replace(" ", "-")), free_port(),
                                     {"d0.test": f"{bulk_ip(0)}:{smtp_port}"}, cert, key, hold=name == "postfix")
                if not postfix.auth:
                    print("Postfix without AUTH: saslpasswd2 (Debian's sasl2-bin) is not installed")
                servers[name] = PostfixServer(name, postfix)
                continue
            vhost = {"listeners": "listeners", "listeners base": "listenersbase"}.get(name, "mtarun")
            url = rabbit.add_vhost(vhost)
            port = free_port()
            path = os.path.join(work, f"{vhost}.yaml")
            with open(path, "w") as fh:
                config = mta_config(url, dns.port, smtp_port, port, cert, key, args.lane)
                if redis is not None:
                    config["cluster"] = {"store": redis.url}
                yaml.safe_dump(config, fh)
            servers[name] = MtaServer(name, work, path, url, port, args.lane, engine=name == "mta run",
                                      processes=args.processes,
                                      root=os.path.abspath(args.baseline) if name == "listeners base" else ROOT)
        if args.profile:
            os.makedirs(args.profile, exist_ok=True)
        for repetition in range(1, args.repetitions + 1):
            for name, server in servers.items():
                try:
                    server.start()
                    for clients in args.clients:
                        spy_to = (os.path.join(args.profile, f"{name.replace(' ', '-')}-{clients}-{repetition}.json")
                                  if args.profile else None)
                        cases.append(one_case(server, clients, args.messages, repetition, args,
                                              None if name.startswith("postfix") else rabbit.beam_pid(), spy_to))
                finally:
                    server.stop()
        print()
        print(f"machine: {machine()}")
        print(f"{args.messages} messages of {args.size} B per case, STARTTLS + AUTH PLAIN"
              + (" (Postfix: no AUTH)" if any(s.startswith("postfix") and not servers[s].auth for s in servers) else "")
              + ", connections reused" + (", pipelined" if args.pipelining else "")
              + (f"; {args.processes} MTA processes" if args.processes > 1 else ""))
        print(table(cases, args.clients, args.repetitions, list(servers)))
        complete = all(c.accepted == args.messages and not c.run.other for c in cases)
        return 0 if complete else 1
    finally:
        for sink in sinks:
            sink.terminate()
        if redis is not None:
            redis.stop()
        dns.stop()
        if rabbit is not None:
            rabbit.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
