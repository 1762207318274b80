"""`mta run CONFIG --processes N`: N delivery processes on one machine, one per core,
sharing their limits through the cluster store (SPEC §6), without a service file each.

Theory of operation: the parent starts N children (`mta run CONFIG --process-index I`),
forwards SIGTERM, SIGINT and SIGHUP to them, and starts a child again when it dies
without being asked to stop (after 1 s, doubling up to a minute while it keeps dying
young). Each child is a node of its own: its node name, metrics port and journal file get
its index (`NODE-I`, `metrics.port + I`, `RULES.outcomes.I`), so that nothing is shared but
the rules file, the broker and the store. Without a store the parent refuses N > 1: every
process would apply every limit in full.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys

import msgspec

import mta
from mta.clock import SYSTEM, Clock

log = logging.getLogger("mta.processes")

RESTART_AFTER = 1.0
RESTART_MAX = 60.0
YOUNG = 30.0  # seconds: a child that dies sooner waits longer before it is started again


def helper(module: str, *args: str, fd: int) -> subprocess.Popen:
    """A helper process of this one (DKIM signing, the event store's writer): `python -m
    MODULE ARGS... FD`, handed the descriptor FD (its end of a socketpair), with `mta`
    importable wherever the MTA was started from."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(mta.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    return subprocess.Popen([sys.executable, "-m", module, *args, str(fd)], pass_fds=(fd,),
                            stdin=subprocess.DEVNULL, env=env)


def refusal(config, processes: int) -> str | None:
    if processes < 1:
        return "--processes must be at least 1"
    if processes > 1 and not config.cluster.store:
        return (f"--processes {processes} needs cluster.store: without a shared store every process "
                "would apply every connection limit and rate in full")
    return None


def for_child(config, index: int, path: str):
    """The rules of child `index`: its own node name, metrics port and journal file."""
    cluster = msgspec.structs.replace(config.cluster, node=f"{config.cluster.node or socket.gethostname()}-{index}")
    metrics = config.metrics
    if metrics.port:
        metrics = msgspec.structs.replace(metrics, port=metrics.port + index)
    broker = config.broker
    if broker.journal:  # "" (none) stays none; relative names are relative to the rules file
        own = f"{os.path.basename(path)}.outcomes" if broker.journal == "auto" else broker.journal
        broker = msgspec.structs.replace(broker, journal=f"{own}.{index}")
    return msgspec.structs.replace(config, cluster=cluster, metrics=metrics, broker=broker)


async def supervise(path: str, processes: int, log_level: str, clock: Clock = SYSTEM) -> int:
    """Run `processes` children until SIGTERM/SIGINT; 0 when they all stopped cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    children: dict[int, asyncio.subprocess.Process] = {}

    def forward(signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            stop.set()
        for proc in children.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGHUP if signum == signal.SIGHUP else signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, forward, sig)

    async def child(index: int) -> int:
        pause = RESTART_AFTER
        while True:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mta", "run", path, "--log-level", log_level, "--process-index", str(index),
                "--siblings", str(processes))
            children[index] = proc
            if stop.is_set():  # SIGTERM came while it was being started
                proc.terminate()
            log.info("delivery process %d started (pid %d)", index, proc.pid)
            started = clock.now()
            code = await proc.wait()
            if stop.is_set():
                return 0 if code in (0, -signal.SIGTERM) else code
            pause = min(pause * 2, RESTART_MAX) if clock.now() - started < YOUNG else RESTART_AFTER
            log.error("delivery process %d (pid %d) ended with %s; starting it again in %.0f s",
                      index, proc.pid, code, pause)
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait([stopped, asyncio.create_task(clock.sleep(pause))],
                               return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                return 0

    codes = await asyncio.gather(*(child(i) for i in range(processes)))
    return 0 if all(code == 0 for code in codes) else 1
