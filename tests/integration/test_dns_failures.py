"""DNS outcomes: null MX and NXDOMAIN bounce hard without SMTP; an MX without an address
is temporary (deferred, then expired with a short max_age) or a bounce."""

import time

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import assert_each_final, finals, run_id


@pytest.mark.timeout(120)
def test_dns_failures(vhost, sinks, start_mta, mta_config):
    mta = start_mta(mta_config(default={"retry_intervals": ["1s", "2s"], "max_age": "4s"}))
    run = run_id()
    nullmx = {f"nm-{run}-{i}": f"user{i}-{run}@nullmx.test" for i in range(3)}
    nx = {f"nx-{run}-{i}": f"user{i}-{run}@nx.test" for i in range(3)}
    noaddr = {f"na-{run}-{i}": f"user{i}-{run}@noaddr.test" for i in range(3)}
    everything = {**nullmx, **nx, **noaddr}
    publish(vhost, "single", [make_message(i, r) for i, r in everything.items()])

    coll = ResultCollector(vhost)
    coll.collect(everything, timeout=60, settle=0.5)
    time.sleep(2.0)
    results = coll.collect((), timeout=1.0, settle=1.0)

    for group in (nullmx, nx):
        by_id = assert_each_final(results, group, "bounced")
        for i, res in by_id.items():
            assert [r["status"] for r in results[i]] == ["bounced"], results[i]
            assert res["bounce"] == "hard", res
            assert res["results"] and res["results"][-1]["phase"] == "dns", res["results"]

    for i in noaddr:
        seq = results.get(i, [])
        assert seq, f"no result at all for {i}"
        assert {r["status"] for r in seq} <= {"deferred", "bounced", "expired"}, seq
        f = finals(results, i)
        assert len(f) == 1 and seq[-1] is f[0], seq
        assert all(r["status"] == "deferred" for r in seq[:-1]), seq

    # no SMTP for any of them: not a single connection anywhere
    assert sinks.connections() == {}, sinks.connections()
    assert sinks.rcpt_attempts() == {}
    assert mta.alive()
