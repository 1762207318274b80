"""`tls: verified` checks the certificate chain (here against the test CA given as
`smtp.ca_file`) and that the certificate names the host: a receiver reached by the name on
its certificate gets the mail over TLS; the same receiver reached by its address (a name
the certificate does not carry) gets none: every attempt is deferred with the reason."""

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.dns import OK_MX
from tests.testbed.tls import tls_farm

HOST = OK_MX[1]  # mx.ok1.test in the test zone


@pytest.fixture
def tls_sink(test_ca):
    farm = tls_farm(test_ca, HOST, names=["mx.ok1.test"])
    try:
        yield farm
    finally:
        farm.stop()


@pytest.mark.timeout(120)
def test_verified_tls_checks_the_host_name(vhost, sinks, tls_sink, test_ca, mta_config, start_mta):
    start_mta(mta_config(
        smtp={"ca_file": test_ca.ca_file},
        domains={"good.test": {"mx": [f"mx.ok1.test:{tls_sink.port}"], "tls": "verified"},
                 "bad.test": {"mx": [f"[{HOST}]:{tls_sink.port}"], "tls": "verified",
                              "retry_intervals": ["1s"], "max_age": "3s"}}))
    run = run_id()
    good = {f"g-{run}-{i}": f"u{i}-{run}@good.test" for i in range(5)}
    bad = {f"b-{run}-{i}": f"u{i}-{run}@bad.test" for i in range(5)}
    publish(vhost, "bulk", [make_message(i, r) for i, r in {**good, **bad}.items()])

    collector = ResultCollector(vhost)
    collector.collect({**good, **bad}, timeout=60, settle=0.5)
    delivered = assert_each_final(collector.by_id, good, "delivered")
    for result in delivered.values():
        attempt = result["results"][-1]
        assert attempt["tls"] is True and attempt["cipher"].startswith("TLSv1.") and attempt["mx"] == "mx.ok1.test"
    assert all(a.cipher for a in tls_sink.accepted())

    expired = assert_each_final(collector.by_id, bad, "expired")
    for result in expired.values():
        for attempt in result["results"]:
            assert attempt["phase"] == "tls" and attempt["tls"] is False
            assert "certificate" in attempt["description"] and "mismatch" in attempt["description"]
    assert not set(tls_sink.count_by_id()) & set(bad)
