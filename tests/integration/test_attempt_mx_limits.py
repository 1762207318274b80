"""A domain with 10 MX hosts of 3 addresses each, none of which takes mail: one attempt
tries at most 5 hosts and 2 addresses of each (smtp.max_mx_hosts, smtp.max_addresses_per_mx)
and ends by smtp.delivery_deadline with one `deferred` result.

Hosts that hang up at once cost nothing: exactly 5 x 2 connections. Hosts that accept
the connection and never answer (a tarpit) each cost a connect timeout: the deadline ends
the attempt before all 10 addresses are tried."""

import time

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import parse_time, run_id
from tests.testbed.config import write_config
from tests.testbed.dns import Dnsmasq, bulk_ip

HANGUP = [bulk_ip(40 + i) for i in range(30)]  # mx{h}.hangup.test: bulk_ip(40 + 3h .. 42 + 3h)
TARPIT = [bulk_ip(70 + i) for i in range(30)]


def _zone(domain: str, addresses: list) -> list:
    records = []
    for h in range(10):
        host = f"mx{h}.{domain}"
        records.append(f"mx-host={domain},{host},{10 + h}")
        records += [f"host-record={host},{addresses[3 * h + a]}" for a in range(3)]
    return records


@pytest.fixture
def ten_mx_dns():
    server = Dnsmasq(records=_zone("hangup.test", HANGUP) + _zone("tarpit.test", TARPIT), log_queries=False)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _config(tmp_path, vhost, dns, sinks):
    return write_config(str(tmp_path / "mta.yaml"), vhost, dns.port, sinks.port,
                        smtp={"delivery_deadline": "3s"},
                        default={"connect_timeout": "1s", "ehlo_timeout": "1s",
                                 "retry_intervals": ["10m"], "max_age": "1h"})


def _one_deferral(vhost, msg_id):
    collector = ResultCollector(vhost)
    collector.collect((), timeout=20, settle=0,
                      until=lambda c: c.by_id.get(msg_id))
    collector.collect((), timeout=2, settle=0)  # nothing more comes
    return collector.by_id.get(msg_id, [])


@pytest.mark.timeout(120)
def test_hosts_that_hang_up_get_5_hosts_times_2_addresses(vhost, sinks, ten_mx_dns, tmp_path, start_mta):
    for ip in HANGUP:
        sinks.set_manner(ip, "hangup")
    start_mta(_config(tmp_path, vhost, ten_mx_dns, sinks))
    msg_id = f"mxl-{run_id()}"
    publish(vhost, "bulk", [make_message(msg_id, f"u@hangup.test")])

    results = _one_deferral(vhost, msg_id)

    assert [r["status"] for r in results] == ["deferred"]
    tried = {ip: n for ip, n in sinks.connections().items() if ip in HANGUP}
    by_host = {h: sum(tried.get(ip, 0) for ip in HANGUP[3 * h:3 * h + 3]) for h in range(10)}
    print(f"connections per MX host: {by_host}")
    assert sum(tried.values()) == 10
    assert by_host == {h: (2 if h < 5 else 0) for h in range(10)}  # MX order, 2 addresses each


@pytest.mark.timeout(120)
def test_a_tarpit_attempt_ends_by_its_deadline(vhost, sinks, ten_mx_dns, tmp_path, start_mta):
    for ip in TARPIT:
        sinks.set_manner(ip, "tarpit")
    start_mta(_config(tmp_path, vhost, ten_mx_dns, sinks))
    msg_id = f"mxd-{run_id()}"
    published = time.time()
    publish(vhost, "bulk", [make_message(msg_id, f"u@tarpit.test")])

    results = _one_deferral(vhost, msg_id)

    assert [r["status"] for r in results] == ["deferred"]
    attempt = results[0]["results"][-1]
    took = parse_time(attempt["time"]) - published
    tried = sum(n for ip, n in sinks.connections().items() if ip in TARPIT)
    print(f"attempt ended {took:.2f}s after publishing, {tried} addresses tried: {attempt['description']}")
    assert "delivery deadline of 3s reached" in attempt["description"]
    assert 3 <= tried <= 4  # 1 s each, within 3 s
    assert took < 3 + 1.5  # the deadline, plus consuming and routing
