"""Accepted means durable (SPEC §7): with the broker blocked by a memory alarm during DATA the
client hears 451 4.3.0 within the publish timeout and keeps the message; after the alarm
clears, its retry is accepted and delivered exactly once. With the broker away: 451 at once."""

import time

import pytest

from tests.testbed.amqp import collect_results
from tests.testbed.checks import run_id
from tests.testbed.submit import ENV, message, queued_id, starttls_client, submission_overrides
from tests.testbed.util import wait_for


def _alarms(rabbit) -> str:
    return rabbit.ctl("eval", "rabbit_alarm:get_alarms().").stdout


def _send(client, rcpt: str, data: bytes, before_dot=None) -> tuple[int, str]:
    assert client.mail("orders@shop.test")[0] == 250
    assert client.rcpt(rcpt)[0] == 250
    code, text = client.docmd("DATA")
    assert code == 354, text
    client.send(data)
    if before_dot is not None:
        before_dot()
    client.send(b".\r\n")
    code, text = client.getreply()
    return code, text.decode()


@pytest.mark.timeout(180)
def test_memory_alarm_during_data_gives_451_and_the_retry_is_delivered_once(rabbit, vhost, sinks, mta_config,
                                                                              start_mta, test_ca):
    overrides, ports = submission_overrides(test_ca)
    start_mta(mta_config(broker={"publish_timeout": "3s"}, **overrides), env=ENV)
    run = run_id()
    rcpt = f"alarm-{run}@ok1.test"
    data = message(f"alarm-{run}", to=rcpt)

    def alarm() -> None:
        rabbit.ctl("set_vm_memory_high_watermark", "0")
        wait_for(lambda: "memory" in _alarms(rabbit), timeout=30)

    try:
        with starttls_client(test_ca, ports.starttls) as client:
            started = time.monotonic()
            code, text = _send(client, rcpt, data, before_dot=alarm)
            answered = time.monotonic()
        assert code == 451 and "4.3.0" in text, text
        assert answered - started < 3 + 30 + 5, "the answer comes within the publish timeout"
        assert not [a for a in sinks.accepted() if a.rcpt == rcpt]
    finally:
        rabbit.ctl("set_vm_memory_high_watermark", "0.4")
        wait_for(lambda: "memory" not in _alarms(rabbit), timeout=60)

    with starttls_client(test_ca, ports.starttls) as client:  # the client retries the same message
        code, text = _send(client, rcpt, data)
    assert code == 250, text
    sid = queued_id(text)
    results = collect_results(vhost, [sid], timeout=60, settle=3.0)
    assert [r["status"] for r in results[sid]] == ["delivered"], results[sid]
    assert len([a for a in sinks.accepted() if a.rcpt == rcpt]) == 1


@pytest.mark.timeout(120)
def test_broker_away_gives_451_at_once(rabbit, vhost, mta_config, start_mta, test_ca):
    overrides, ports = submission_overrides(test_ca)
    start_mta(mta_config(**overrides), env=ENV)
    run = run_id()
    with starttls_client(test_ca, ports.starttls) as client:
        rabbit.ctl("close_all_connections", "-p", vhost.rsplit("/", 1)[1], "test: broker away")
        started = time.monotonic()
        code, text = _send(client, f"away-{run}@ok1.test", message(f"away-{run}"))
        assert code == 451 and "4.3.0" in text, text
        assert time.monotonic() - started < 5
