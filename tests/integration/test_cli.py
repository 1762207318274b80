"""The `mta` command line: help, `check` of good and bad rules files, `run` refusing a bad
file before it connects anywhere, and a clean exit 0 on SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from tests.testbed.amqp import collect_results, make_message, publish, queue_info
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.mtaproc import REPO_ROOT

pytestmark = pytest.mark.timeout(60)

SPEC_EXAMPLE = os.path.join(REPO_ROOT, "config", "spec-example.yaml")
PASSWORD = "S3cr3t-Hunter2-do-not-print"


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def mta(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """``python -m mta ARGS`` (the same entry point as the ``mta`` console script)."""
    return subprocess.run([sys.executable, "-m", "mta", *args], cwd=REPO_ROOT, env=_env(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)


def _bad_config(path, broker_url: str = "amqp://guest:guest@127.0.0.1:1/") -> str:
    path.write_text(textwrap.dedent(f"""\
        broker:
          url: {broker_url}
          prefetchh: 10                 # unknown key (typo)
        metrics:
          port: 0
        default:
          max_message_rate: 20/our      # bad rate
          idle_timeout: 5 parsecs       # bad duration
          tls: sometimes                # bad choice
        routes:
          - sender_domain: customer.example
            smarthost: "[smtp.customer.example]:587"
            password: "{PASSWORD}"      # secrets never go in the rules file
        """))
    return str(path)


# ---------------------------------------------------------------------- help / check
def test_help():
    proc = mta("--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("run", "check", "replay-quarantined"):
        assert command in proc.stdout, (command, proc.stdout)


def test_replay_parked_is_still_understood():
    """`replay-quarantined`'s former name, kept for the scripts that use it."""
    proc = mta("replay-parked", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--limit" in proc.stdout


def test_console_script_help():
    """The installed ``mta`` entry point, when the venv has one."""
    script = os.path.join(os.path.dirname(sys.executable), "mta")
    if not os.path.exists(script):
        script = shutil.which("mta")
    if not script:
        pytest.skip("no `mta` console script installed")
    proc = subprocess.run([script, "--help"], cwd=REPO_ROOT, env=_env(), capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "replay-quarantined" in proc.stdout


def test_no_command_is_a_usage_error():
    proc = mta()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "usage" in proc.stderr.lower()


def test_check_spec_example(tmp_path):
    # the example's DKIM key file exists only on a real host: check names it (see
    # test_dkim_cli.py), so check a copy that points at a key of the same kind
    key = tmp_path / "sender.example.pem"
    assert mta("dkim-keygen", "sender.example", "s2026", "--key-file", str(key)).returncode == 0
    config = tmp_path / "spec.yaml"
    with open(SPEC_EXAMPLE) as fh:
        config.write_text(fh.read().replace("/etc/mta/dkim/sender.example.pem", str(key)))
    proc = mta("check", str(config))
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "OK" in proc.stdout, proc.stdout
    assert proc.stderr == "", proc.stderr


def test_check_reports_every_problem(tmp_path):
    cfg = _bad_config(tmp_path / "bad.yaml")
    proc = mta("check", cfg)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    err = proc.stderr
    expected = {
        "broker.prefetchh": "unknown key",
        "default.max_message_rate": "20/our",
        "default.idle_timeout": "parsecs",
        "default.tls": "sometimes",
        "routes[0].password": "password_env",
    }
    problem_lines = [line.strip() for line in err.splitlines() if line.startswith("  ")]
    for key_path, hint in expected.items():
        hits = [line for line in problem_lines if line.startswith(f"{key_path}:")]
        assert len(hits) == 1, f"{key_path!r} not reported exactly once in:\n{err}"
        assert hint in hits[0], (key_path, hits[0])
    assert len(problem_lines) == len(expected), err
    assert f"{len(expected)} problem(s)" in err, err
    assert "OK" not in proc.stdout
    # the secret must not leak, whatever stream
    assert PASSWORD not in err and PASSWORD not in proc.stdout


def test_check_missing_file(tmp_path):
    proc = mta("check", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 1
    assert "cannot read" in proc.stderr, proc.stderr


def test_run_bad_config_never_connects(tmp_path):
    """A bad file stops `mta run` before it opens a single connection."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        cfg = _bad_config(tmp_path / "bad.yaml", f"amqp://guest:guest@127.0.0.1:{port}/")
        proc = mta("run", cfg, timeout=30)
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        assert "routes[0].password" in proc.stderr
        assert PASSWORD not in proc.stderr and PASSWORD not in proc.stdout
        assert "consuming" not in proc.stderr
        try:
            conn, peer = listener.accept()
        except BlockingIOError:
            conn = None
        else:
            conn.close()
        assert conn is None, f"`mta run` with a bad file connected to the broker from {peer}"
    finally:
        listener.close()


# ---------------------------------------------------------------------- SIGTERM
@pytest.mark.timeout(90)
def test_sigterm_exits_zero_after_delivering(vhost, sinks, start_mta):
    mta_proc = start_mta()
    run = run_id()
    domains = ("ok1.test", "ok2.test", "ok3.test")
    msgs = {f"term-{run}-{i}": f"user{i}-{run}@{domains[i % len(domains)]}" for i in range(50)}
    publish(vhost, "bulk", [make_message(i, r) for i, r in msgs.items()])

    results = collect_results(vhost, msgs, timeout=45, settle=0.5)
    assert_each_final(results, msgs, "delivered")

    mta_proc.signal(signal.SIGTERM)
    assert mta_proc.wait(timeout=10) == 0, mta_proc.log_tail()
    assert "stopped" in mta_proc.log_text(), mta_proc.log_tail()

    # nothing left unacknowledged: with the consumer gone, unacked would be ready again
    for lane in ("mta.bulk", "mta.single"):
        assert queue_info(vhost, lane) == {"messages": 0, "consumers": 0}, lane
    counts = sinks.count_by_id()
    assert {i: counts.get(i, 0) for i in msgs} == {i: 1 for i in msgs}
