"""A route's own limits hold at its smarthost: `max_message_rate: 120/min` (2/s, a burst
of 2) and `connection_limit: 2` for a customer's mail, while mail without a route still
goes out at the default limits."""

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.tls import tls_farm

SMARTHOST = "127.0.3.5"
USER, PASSWORD = "rate@customer.test", "rate-limited-s3cret"
RATE = 2.0  # per second
BURST = 2


@pytest.fixture
def smarthost(test_ca):
    farm = tls_farm(test_ca, SMARTHOST, ips=[SMARTHOST], auth={USER: PASSWORD})
    try:
        yield farm
    finally:
        farm.stop()


@pytest.mark.timeout(120)
def test_route_rate_cap_holds_at_the_smarthost(vhost, sinks, smarthost, test_ca, mta_config, start_mta):
    start_mta(mta_config(routes=[{
        "sender_domain": "customer.test", "smarthost": f"[{SMARTHOST}]:{smarthost.port}",
        "username": USER, "password_env": "RATE_SMTP_PASSWORD", "ca_file": test_ca.ca_file,
        "max_message_rate": "120/min", "connection_limit": 2}]), env={"RATE_SMTP_PASSWORD": PASSWORD})
    run = run_id()
    routed = {f"r-{run}-{i}": f"u{i}-{run}@ok1.test" for i in range(14)}
    free = {f"f-{run}-{i}": f"u{i}-{run}@ok2.test" for i in range(14)}
    publish(vhost, "bulk", [make_message(i, r, envelope="news@customer.test") for i, r in routed.items()]
            + [make_message(i, r) for i, r in free.items()])

    collector = ResultCollector(vhost)
    collector.collect({**routed, **free}, timeout=60, settle=0.5)
    assert_each_final(collector.by_id, {**routed, **free}, "delivered")

    times = sorted(a.time for a in smarthost.accepted())
    assert len(times) == len(routed)
    for n, t in enumerate(times):
        # GCRA: the n-th message can go no sooner than (n - burst + 1) / rate after the first
        earliest = (n - BURST + 1) / RATE
        assert t - times[0] >= earliest - 0.25, f"message {n} after {t - times[0]:.2f}s, cap allows {earliest:.2f}s"
    span = times[-1] - times[0]
    assert span >= (len(times) - BURST) / RATE - 0.25
    assert smarthost.max_concurrent()[SMARTHOST] <= 2
    free_times = sorted(a.time for a in sinks.accepted() if a.msg_id in free)
    assert free_times[-1] - free_times[0] < span / 2, "unrouted mail was slowed by the route's cap"
