"""Scenario 5 of the fault suite: DNS failures, each with its one final result and no SMTP.

SERVFAIL and a resolver that never answers are temporary (deferred, then `expired` with a
short max_age); NXDOMAIN and null MX bounce hard at once; an MX host without an address
ends deferred-then-expired or bounced. Healthy domains resolved through the same server
keep being delivered meanwhile.
"""

from __future__ import annotations

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import run_id
from tests.testbed.dns import FaultyDns
from tests.testbed.ledger import Ledger

N = 10


@pytest.mark.timeout(180)
def test_dns_failures_each_end_in_one_result(vhost, dns, sinks, start_mta, mta_config):
    with FaultyDns(dns.port, servfail=["servfail.test"], silent=["silent.test"]) as front:
        cfg = mta_config(dns={"port": front.port, "timeout": "1s"},
                         default={"retry_intervals": ["1s", "2s"], "max_age": "6s"})
        mta = start_mta(cfg)
        run = run_id()
        ledger = Ledger("dns failures", bound=0)
        groups = {  # domain: final status
            "servfail.test": "expired",
            "silent.test": "expired",
            "nx.test": "bounced",
            "nullmx.test": "bounced",
            "noaddr.test": None,           # expired or bounced, one of them
            "ok1.test": "delivered",
        }
        docs = []
        by_group = {}
        for domain, status in groups.items():
            ids = {f"dns-{domain.split('.')[0]}-{run}-{i}": f"user{i}-{run}@{domain}"
                   for i in range(N)}
            by_group[domain] = ids
            ledger.add(ids, status=status)
            docs += [make_message(i, r) for i, r in ids.items()]
        publish(vhost, "bulk", docs)
        collector = ResultCollector(vhost)
        collector.collect(ledger.ids, timeout=120, settle=1.0)
        fig = ledger.check(collector.by_id, sinks.count_by_id(), sink_duplicates_allowed=0)
        for domain in ("servfail.test", "silent.test"):
            assert front.queries.get(domain + "."), f"{fig.line()}: {domain} never queried"
            for i in by_group[domain]:
                final = collector.finals(i)[0]
                assert final["results"][-1]["phase"] == "dns", final["results"]
        for domain in ("nx.test", "nullmx.test"):
            for i in by_group[domain]:
                assert collector.finals(i)[0].get("bounce") == "hard"
        failing = {d for d in groups if d != "ok1.test"}
        assert not [r for r in sinks.rcpt_attempts() if r.rsplit("@", 1)[1] in failing]
        assert mta.alive()
