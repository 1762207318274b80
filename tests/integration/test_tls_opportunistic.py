"""`tls: opportunistic`: a receiver that offers STARTTLS but breaks the handshake costs one
deferred attempt (phase `tls`); the next attempt to that host goes in plaintext and
delivers, and the result says the session was not encrypted."""

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.tls import tls_farm

HOST = "127.0.3.4"


@pytest.fixture
def broken_sink(test_ca):
    farm = tls_farm(test_ca, HOST, names=["mx.broken.test"])
    farm.set_broken_starttls(True)
    try:
        yield farm
    finally:
        farm.stop()


@pytest.mark.timeout(120)
def test_broken_handshake_falls_back_to_plaintext(vhost, sinks, broken_sink, mta_config, start_mta):
    start_mta(mta_config(domains={"broken.test": {"mx": [f"[{HOST}]:{broken_sink.port}"],
                                                  "tls": "opportunistic", "retry_intervals": ["1s"]}}))
    run = run_id()
    ids = {f"t-{run}-{i}": f"u{i}-{run}@broken.test" for i in range(5)}
    publish(vhost, "bulk", [make_message(i, r) for i, r in ids.items()])

    collector = ResultCollector(vhost)
    collector.collect(ids, timeout=60, settle=0.5)
    results = assert_each_final(collector.by_id, ids, "delivered")
    first_tries = [r["results"][0] for r in results.values()]
    assert any(a["phase"] == "tls" for a in first_tries), "no attempt met the broken handshake"
    for result in results.values():
        *failed, last = result["results"]
        assert all(a["phase"] == "tls" for a in failed) and len(failed) <= 1
        assert last["tls"] is False and last["cipher"] is None and last["code"] == 250
    counts = broken_sink.count_by_id()
    assert {i: counts.get(i) for i in ids} == {i: 1 for i in ids}
    assert not any(a.cipher for a in broken_sink.accepted())
