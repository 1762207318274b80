"""Providers group their domains by MX host suffix (a private zone: each domain has an MX
host of its own under the provider's suffix, all on one sink address that counts
simultaneous sessions).

* Rollup: two domains of provider `roll` (connection_limit 2) share one destination and
  its limit: never more than 2 sessions together, although each domain alone would be
  allowed the default 10.
* Domain entries under a provider: provider `big` allows 3 connections, two of its domains
  have entries of their own allowing 2 each: never more than 3 sessions together."""

import pytest

from tests.testbed.amqp import collect_results, make_message, publish
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.config import write_config
from tests.testbed.dns import Dnsmasq, bulk_ip

ROLL_IP, BIG_IP = bulk_ip(90), bulk_ip(91)


@pytest.fixture
def provider_dns():
    records = []
    for domain, host, ip in (("ra.test", "mx.ra.roll.test", ROLL_IP), ("rb.test", "mx.rb.roll.test", ROLL_IP),
                             ("ba.test", "mx.ba.big.test", BIG_IP), ("bb.test", "mx.bb.big.test", BIG_IP)):
        records += [f"mx-host={domain},{host},10", f"host-record={host},{ip}"]
    server = Dnsmasq(records=records, log_queries=False)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _run(vhost, sinks, tmp_path, start_mta, dns, ip, names, **rules):
    sinks.set_data_delay(ip, 0.1)  # slow enough that every destination wants all its connections
    start_mta(write_config(str(tmp_path / "mta.yaml"), vhost, dns.port, sinks.port, **rules))
    run = run_id()
    msgs = {f"pv-{run}-{d}-{i}": f"user{i}-{run}@{d}" for d in names for i in range(30)}
    publish(vhost, "bulk", [make_message(i, r) for i, r in msgs.items()])
    results = collect_results(vhost, msgs, timeout=90, settle=0.5)
    assert_each_final(results, msgs, "delivered")
    return sinks.max_concurrent()[ip]


@pytest.mark.timeout(180)
def test_domains_of_a_provider_share_its_destination(vhost, sinks, provider_dns, tmp_path, start_mta):
    most = _run(vhost, sinks, tmp_path, start_mta, provider_dns, ROLL_IP, ("ra.test", "rb.test"),
                providers={"roll": {"mx_suffix": [".roll.test"], "connection_limit": 2}})
    print(f"most sessions at once at the provider's sink: {most}")
    assert most == 2


@pytest.mark.timeout(180)
def test_domain_entries_stay_within_their_providers_connections(vhost, sinks, provider_dns, tmp_path, start_mta):
    most = _run(vhost, sinks, tmp_path, start_mta, provider_dns, BIG_IP, ("ba.test", "bb.test"),
                providers={"big": {"mx_suffix": [".big.test"], "connection_limit": 3}},
                domains={"ba.test": {"connection_limit": 2}, "bb.test": {"connection_limit": 2}})
    print(f"most sessions at once at the provider's sink: {most}")
    assert most == 3
