"""A flood on the control exchange is bounded: the process takes control messages through a
prefetch window with acknowledgements, from a queue of bounded length, refuses bodies over
64 KB unread, and still obeys a well-formed command afterwards."""

import subprocess
import sys

import pytest

from tests.testbed.amqp import publish
from tests.testbed.rabbit import vhost_of
from tests.testbed.util import wait_for


def _control_consumer(rabbit, vhost: str) -> list[tuple[str, str]]:
    """(ack_required, prefetch_count) of each consumer of a server-named queue."""
    cp = rabbit.ctl("list_consumers", "-p", vhost_of(vhost), "--quiet", "--no-table-headers",
                    "queue_name", "ack_required", "prefetch_count", check=False)
    return [tuple(line.split("\t")[1:3]) for line in cp.stdout.splitlines() if line.startswith("amq.gen-")]


def _control_queue_arguments(rabbit, vhost: str) -> list[str]:
    cp = rabbit.ctl("list_queues", "-p", vhost_of(vhost), "--quiet", "--no-table-headers",
                    "name", "arguments", check=False)
    return [line for line in cp.stdout.splitlines() if line.startswith("amq.gen-")]


@pytest.mark.timeout(120)
def test_a_control_flood_is_bounded_and_commands_still_work(rabbit, vhost, sinks, mta_config, start_mta):
    config = mta_config()
    mta = start_mta(config)
    wait_for(lambda: "consuming" in mta.log_text(), 30, what="the MTA consuming")

    assert _control_consumer(rabbit, vhost) == [("true", "16")]
    [arguments] = _control_queue_arguments(rabbit, vhost)
    assert "x-max-length" in arguments and "1000" in arguments, arguments

    big = b'{"command": "status", "pad": "' + b"x" * (70 * 1024) + b'"}'
    publish(vhost, "", [big] * 50, exchange="mta.control", mandatory=False)
    wait_for(lambda: "ignored a control message (too large" in mta.log_text(), 30, what="the refusal logged")

    done = subprocess.run([sys.executable, "-m", "mta", "pause", "ok2.test", "--for", "1m", "--config", config],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "acknowledged by 1 MTA(s) of 1" in done.stdout, (done.stdout, done.stderr)
    assert mta.alive()
