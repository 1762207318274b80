"""`mta pause`, `mta resume` and `mta reload` say how many MTA processes acknowledged them:
both of two running MTAs answer each; a command they refuse says why and exits 1; with no
MTA on the broker the command is an error, not a silent success."""

import subprocess
import sys

import pytest

from tests.testbed.util import wait_for


def mta_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mta", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(120)
def test_two_mtas_acknowledge_pause_resume_and_reload(vhost, sinks, mta_config, start_mta):
    config = mta_config()
    mtas = [start_mta(config), start_mta(config)]
    wait_for(lambda: all("consuming" in m.log_text() for m in mtas), 30, what="both MTAs consuming")

    for args, said in ((("pause", "ok2.test", "--for", "10m"), "pause ok2.test for 10m: acknowledged by 2 MTA(s) of 2"),
                       (("resume", "ok2.test"), "resume ok2.test: acknowledged by 2 MTA(s) of 2"),
                       (("reload",), "reload: acknowledged by 2 MTA(s) of 2")):
        done = mta_cli(*args, "--config", config)
        assert done.returncode == 0, done.stderr
        assert said in done.stdout, done.stdout
    assert all("pause ok2.test" in m.log_text() and "reloaded" in m.log_text() for m in mtas)

    done = mta_cli("pause", "x" * 1001, "--config", config)
    assert done.returncode == 1
    assert "acknowledged by 0 MTA(s) of 2" in done.stdout
    assert done.stderr.count("refused: the target is longer than 1000 characters") == 2, done.stderr


@pytest.mark.timeout(60)
def test_with_no_mta_listening_pause_is_an_error(vhost, mta_config):
    config = mta_config()
    for args in (("pause", "ok2.test"), ("resume", "ok2.test"), ("reload",)):
        done = mta_cli(*args, "--config", config, "--wait", "1")
        assert done.returncode == 1, (args, done.stdout)
        assert "no MTA acknowledged it within 1 s: none is running on this broker" in done.stderr
