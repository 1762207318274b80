"""mta/fault.py: MTA_FAULT ends the process at the n-th pass of its point, and only there."""

import os
import subprocess
import sys

from tests.testbed.mtaproc import REPO_ROOT

SCRIPT = ("import sys; from mta import fault\n"
          "for i in range(5):\n"
          "    fault.hit('consumed'); fault.hit('after_250')\n"
          "    print(i, flush=True)\n"
          "sys.exit(0 if not fault.ARMED else 3)\n")


def _run(value):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    env.pop("MTA_FAULT", None)
    if value is not None:
        env["MTA_FAULT"] = value
    return subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=30)


def test_unset_is_unarmed():
    cp = _run(None)
    assert cp.returncode == 0 and cp.stdout.split() == ["0", "1", "2", "3", "4"]


def test_dies_at_the_nth_pass_of_its_point():
    cp = _run("after_250:3")
    assert cp.returncode == 137
    assert cp.stdout.split() == ["0", "1"]
    assert "MTA_FAULT: exiting at after_250" in cp.stderr


def test_unknown_point_is_unarmed():
    cp = _run("no_such_point")
    assert cp.returncode == 0
