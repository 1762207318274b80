"""Shared fixtures: a private RabbitMQ node, dnsmasq and SMTP sink farm per test session,
a fresh vhost per test, and factories for MTA configs and processes.

Session fixtures start lazily: unit tests that use none of them start nothing.

Under pytest-xdist every worker process is a session of its own: it starts its own node
(own name, ports and directory), dnsmasq and sink farm, on ports picked free at start.

Environment knobs:
  MTA_TEST_AMQP_PORT  AMQP port of the test node (default 5680; dist port +20000); worker
                      N of a parallel run uses this port + N
  MTA_TEST_KEEP=1     keep the node / dnsmasq directories after the session
  MTA_TEST_DURATIONS  write each test's duration to this file (the table of
                      tests/testbed/schedule.py) at the end of the run
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import threading
import uuid

import pytest

from tests.testbed.config import write_config
from tests.testbed.dns import Dnsmasq, standard_sink_addresses, standard_zone
from tests.testbed.mtaproc import MtaProcess
from tests.testbed.rabbit import (DEFAULT_DIST_PORT, DEFAULT_NODENAME, DEFAULT_PORT, RabbitError,
                                  RabbitNode, _find)
from tests.testbed.schedule import DurationRecorder, load_durations, order
from tests.testbed.sinks import SinkFarm
from tests.testbed.util import free_port, port_is_free

N_BULK_DOMAINS = 100


def pytest_configure(config):
    # A CI job cancelled with SIGTERM should still stop the broker, dnsmasq and MTAs:
    # turn SIGTERM into KeyboardInterrupt so pytest runs the fixture finalizers.
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        def _sigterm(signum, frame):
            raise KeyboardInterrupt("SIGTERM")
        signal.signal(signal.SIGTERM, _sigterm)


def _keep() -> bool:
    return os.environ.get("MTA_TEST_KEEP") == "1"


def _xdist_worker():
    """The worker's name ("gw0", "gw1", ...) in a pytest-xdist worker process, else None."""
    return os.environ.get("PYTEST_XDIST_WORKER")


def _requested_ports(worker: int):
    """The ports asked for through MTA_TEST_*_PORT, shifted by the worker's number so
    that the workers of a parallel run do not share them."""
    port = int(os.environ["MTA_TEST_AMQP_PORT"])
    env_dist = os.environ.get("MTA_TEST_DIST_PORT")
    dist = int(env_dist) if env_dist else (DEFAULT_DIST_PORT if port == DEFAULT_PORT
                                           else port + 20000)
    env_epmd = os.environ.get("MTA_TEST_EPMD_PORT")
    epmd = int(env_epmd) if env_epmd else dist + 1000
    return port + worker, dist + worker, epmd + worker


def _pick_rabbit_ports():
    """(port, dist_port, epmd_port, nodename): the requested ones, else the defaults, or
    free ones when the defaults are taken by another session. The workers of a parallel
    run never take the defaults: they would all see them free at once."""
    worker = _xdist_worker()
    if os.environ.get("MTA_TEST_AMQP_PORT"):
        if worker is None:
            return int(os.environ["MTA_TEST_AMQP_PORT"]), None, None, DEFAULT_NODENAME
        port, dist, epmd = _requested_ports(int(worker.lstrip("gw") or 0))
        return port, dist, epmd, f"mtatest{port}@localhost"
    port = DEFAULT_PORT
    if worker is None and all(port_is_free(p) for p in (port, port + 20000, port + 21000)):
        return port, None, None, DEFAULT_NODENAME
    for _ in range(50):
        port = free_port(lo=20000, hi=32000)
        if port_is_free(port + 20000) and port_is_free(port + 21000):
            return port, port + 20000, port + 21000, f"mtatest{port}@localhost"
    raise RuntimeError("no free ports for a private RabbitMQ node")


@pytest.fixture(scope="session")
def rabbit():
    """The session's private RabbitMQ node (tests.testbed.rabbit.RabbitNode)."""
    if not _find("rabbitmq-server") or not _find("rabbitmqctl"):
        pytest.fail("rabbitmq-server is not installed: run `bash scripts/setup.sh` "
                    "(apt-get install rabbitmq-server) first", pytrace=False)
    for attempt in range(3):
        port, dist, epmd, nodename = _pick_rabbit_ports()
        basedir = tempfile.mkdtemp(prefix="mta-rabbit-", dir="/tmp")
        node = RabbitNode(basedir, port=port, dist_port=dist, nodename=nodename, epmd_port=epmd)
        try:
            node.start()
            break
        except BaseException as exc:
            node.stop()
            if not _keep():
                shutil.rmtree(basedir, ignore_errors=True)
            # Free ports are picked before the node binds them: a node of another session
            # or worker may have bound one in between. Only then try other ports.
            lost_race = (isinstance(exc, RabbitError) and attempt < 2
                         and not os.environ.get("MTA_TEST_AMQP_PORT")
                         and not all(port_is_free(p) for p in (node.port, node.dist_port)))
            if not lost_race:
                raise
    try:
        yield node
    finally:
        try:
            node.stop()
        finally:
            if not _keep():
                shutil.rmtree(basedir, ignore_errors=True)


@pytest.fixture(scope="session")
def dns():
    """dnsmasq with tests.testbed.dns.standard_zone() on a free loopback port."""
    server = Dnsmasq(records=standard_zone(N_BULK_DOMAINS))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def sink_farm():
    """The session's SinkFarm: 127.0.1.1-6 and 127.0.2.1-100 on one free port."""
    farm = SinkFarm(standard_sink_addresses(N_BULK_DOMAINS))
    try:
        farm.start()
        yield farm
    finally:
        farm.stop()


@pytest.fixture(scope="session")
def redis_server():
    """The session's private Redis (tests.testbed.redisd.RedisServer), for several nodes."""
    from tests.testbed.redisd import RedisServer

    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def redis_url(redis_server):
    """The private Redis, emptied for this test; the value is its URL."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()  # a test before this one stopped it
    redis_server.flush()
    return redis_server.url


@pytest.fixture(scope="session")
def test_ca():
    """A certificate authority made for this session (tests.testbed.tls.TestCA): sink
    certificates from ``issue()``/``server_context()``, its certificate in ``ca_file``."""
    from tests.testbed.tls import TestCA

    directory = tempfile.mkdtemp(prefix="mta-test-ca-", dir="/tmp")
    try:
        yield TestCA(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def sinks(sink_farm):
    """The sink farm, with records, counters and scripted extras reset for this test."""
    sink_farm.reset()
    sink_farm.clear_rules()
    yield sink_farm
    sink_farm.clear_rules()


def _vhost_name(request) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:60]
    return f"t-{base}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def vhost(rabbit, request):
    """A fresh vhost for this test; the value is its AMQP URL (guest has full rights).

    The vhost of the previous test is deleted as this one is created, in the same
    rabbitmqctl run (RabbitNode.replace_vhosts), not at the end of its own test: by then
    that test's MTAs are gone, and one run of the CLI is about a second less per test."""
    name = _vhost_name(request)
    retire = _retired_vhosts.setdefault(rabbit, [])
    url = rabbit.replace_vhosts(name, retire)
    retire.clear()
    yield url
    retire.append(name)


_retired_vhosts: dict = {}   # {RabbitNode: names of vhosts whose tests are over}


@pytest.fixture
def mta_config(tmp_path, vhost, dns, sink_farm):
    """Factory: ``mta_config(url=None, name="mta.yaml", **overrides) -> path``.

    Writes a YAML config (tests.testbed.config.write_config) for this test's vhost, the
    session dnsmasq and the sink port; ``overrides`` deep-merge into the defaults.
    """
    def make(url=None, name="mta.yaml", **overrides):
        return write_config(str(tmp_path / name), url or vhost, dns.port, sink_farm.port,
                            **overrides)
    return make


@pytest.fixture
def start_mta(request, vhost, mta_config):
    """Factory: ``start_mta(config_path=None, env=None, wait=True, url=None,
    timeout=30.0) -> MtaProcess``.

    Starts ``python -m mta run CONFIG`` (default config: ``mta_config()``) and waits until
    it consumes ``mta.bulk`` in ``url`` (default: this test's vhost).  Every process it
    started is terminated (SIGTERM, then SIGKILL) when the test ends; the log tails of
    a failed test's MTAs are added to the report.
    """
    procs = []
    request.node._mta_processes = procs

    def start(config_path=None, env=None, wait=True, url=None, timeout=30.0):
        path = config_path or mta_config()
        idx = len(procs)
        proc = MtaProcess(path, env=env, log_path=f"{path}.{idx}.log")
        procs.append(proc)
        proc.start()
        if wait:
            # Consumed, not just declared: the MTA binds its queues after declaring them,
            # and a producer publishing (mandatory) in between gets NO_ROUTE.
            proc.wait_ready(url or vhost, timeout=timeout, require_consumer=True)
        return proc

    yield start
    for proc in procs:
        proc.terminate(timeout=30)


def _parallel(config) -> bool:
    """True in every process of a pytest-xdist run (controller and workers)."""
    return _xdist_worker() is not None or bool(getattr(config.option, "numprocesses", None))


def pytest_collection_modifyitems(session, config, items):
    # The test bed's own checks first: when the infrastructure is broken, say so early.
    # In a parallel run, then the longest tests first (tests/testbed/schedule.py); serially
    # file by file, so that module fixtures are set up once.
    if _parallel(config):
        ranked = order([item.nodeid for item in items], load_durations())
        items[:] = [items[i] for i in ranked]
    else:
        items.sort(key=lambda item: 0 if item.nodeid.startswith(
            "tests/integration/test_testbed.py") else 1)


_durations = DurationRecorder()


def pytest_runtest_logreport(report):
    if os.environ.get("MTA_TEST_DURATIONS") and _xdist_worker() is None:
        _durations.add(report.nodeid, report.duration)


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("MTA_TEST_DURATIONS")
    if path and _xdist_worker() is None and _durations.seconds:
        _durations.write(path)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and rep.when in ("call", "setup"):
        for proc in getattr(item, "_mta_processes", []):
            rep.sections.append((f"MTA pid {proc.pid} log tail ({proc.log_path})",
                                 proc.log_tail(8000)))
