"""A real Prometheus scrapes an MTA that delivers, defers, bounces, expires, parks and
pauses mail: the counters match what the SMTP sinks and the results saw, and every query
of every panel of grafana/dashboards/mta.json returns data."""

import base64
import json
import math
import os
import subprocess
import sys
import time

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import run_id
from tests.testbed.mtaproc import REPO_ROOT
from tests.testbed.prometheus import PrometheusServer
from tests.testbed.submit import ENV, message, starttls_client, submission_overrides, submit
from tests.testbed.util import free_port, wait_for

DASHBOARD = os.path.join(REPO_ROOT, "grafana", "dashboards", "mta.json")
# What Grafana substitutes for the dashboard's variables; windows long enough for one test run.
VARIABLES = {"$__rate_interval": "2m", "$instance": ".*"}


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, variables substituted."""
    with open(DASHBOARD) as fh:
        doc = json.load(fh)
    out = []
    panels = list(doc["panels"])
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"{panel['title']}: unsubstituted variable in {expr!r}"
            out.append((panel["title"], expr))
    return out


def mta_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mta", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(300)
def test_prometheus_scrapes_counts_that_match_the_sinks(vhost, sinks, mta_config, start_mta, tmp_path, test_ca):
    port = free_port()
    listening, ports = submission_overrides(test_ca)  # the dashboard's submission row needs a listener
    # and an inbound listener (its row's late reports)
    listening["inbound"] = [{"address": f"127.0.0.1:{free_port()}", "domains": ["bounces.test"]}]
    config = mta_config(metrics={"port": port, "address": "127.0.0.1"}, **listening,
                        default={"max_age": "10m", "retry_intervals": ["1s"]},  # paused mail stays held
                        domains={"ok1.test": {"max_age": "5s"},  # temp- mail expires quickly
                                 "ok2.test": {"max_message_rate": "2/s", "connection_limit": 1}})
    mta = start_mta(config, env=ENV)
    prom = PrometheusServer([f"127.0.0.1:{port}"], str(tmp_path / "prometheus"))
    with prom:
        prom.wait_up()
        wait_for(lambda: "consuming" in mta.log_text(), 30, what="the MTA consuming")
        done = mta_cli("pause", "ok3.test", "--config", config)
        assert done.returncode == 0, done.stderr
        wait_for(lambda: "pause ok3.test" in mta.log_text(), 10, what="the pause to arrive")

        run = run_id()
        kinds = {"user": 30, "hard-": 4, "full-": 3, "temp2-": 3, "temp-": 2}
        msgs = {}
        for kind, n in kinds.items():
            for i in range(n):
                local = f"{kind}{i}-{run}" if kind != "user" else f"user{i}-{run}"
                msgs[f"m-{kind}{i}-{run}"] = f"{local}@ok1.test"
        for i in range(10):  # ten destinations of their own
            for j in range(6):
                msgs[f"d-{i}-{j}-{run}"] = f"user{j}-{run}@d{i}.test"
        # 2/s and 1 connection: 10 s of the rate (20) wait in the ready queue, besides what its one
        # worker holds (the job whose rate slot it booked, and one on the wire): the rest is held
        parked = {f"slow-{i}-{run}": f"user{i}-{run}@ok2.test" for i in range(30)}
        in_memory = 20 + 2
        paused = {f"paused-{i}-{run}": f"user{i}-{run}@ok3.test" for i in range(5)}
        single = {f"single-{i}-{run}": f"user{i}-{run}@ok1.test" for i in range(5)}
        publish(vhost, "bulk", [make_message(i, r) for i, r in {**msgs, **parked, **paused}.items()])
        publish(vhost, "single", [make_message(i, r) for i, r in single.items()])
        publish(vhost, "bulk", [b"not JSON", b'{"recipient": "no-at-sign", "envelope": "", "mime": "x"}'])
        # one submission (to the paused domain: it changes none of the counts compared below),
        # one refused MAIL, one failed login
        with starttls_client(test_ca, ports.starttls) as client:
            code, text = submit(client, "orders@shop.test", [f"sub-{run}@ok3.test"], message(f"sub-{run}"))
            assert code == 250, text
        with starttls_client(test_ca, ports.starttls, login=False) as client:
            assert client.mail("orders@shop.test")[0] == 530
            assert client.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0webshop\0wrong").decode())[0] == 535

        final_ids = {**msgs, **parked, **single}
        collector = ResultCollector(vhost)
        collector.collect(final_ids, timeout=120, settle=1.0)
        assert not collector.missing_final(final_ids), f"no final result for {sorted(collector.missing_final(final_ids))[:5]}"
        results = [doc for _, doc in collector.raw]
        by_status = {s: sum(1 for d in results if d["status"] == s)
                     for s in ("delivered", "deferred", "bounced", "expired", "invalid")}
        hard = sum(1 for d in results if d["status"] == "bounced" and d.get("bounce") == "hard")
        accepted = sum(1 for i, n in sinks.count_by_id().items() if i in final_ids for _ in range(n))
        assert accepted == by_status["delivered"] == 30 + 3 + 60 + 30 + 5
        assert by_status["bounced"] == 7 and hard == 4 and by_status["expired"] == 2 and by_status["invalid"] == 2

        def scraped(expr: str, want: float):
            return lambda: prom.value(expr) == want

        # Wait for a scrape that saw every outcome, then compare each counter.
        wait_for(scraped("sum(mta_delivered_total)", accepted), 20, what="a scrape after the last delivery")
        wait_for(scraped("sum(mta_expired_total)", 2), 20, what="a scrape after the expiries")
        assert prom.value("sum(mta_delivered_total)") == accepted
        assert prom.value('sum(mta_delivered_total{lane="single"})') == len(single)
        assert prom.value('sum(mta_bounced_total{bounce="hard"})') == hard
        assert prom.value('sum(mta_bounced_total{bounce="soft"})') == by_status["bounced"] - hard
        assert prom.value("sum(mta_deferred_total)") == by_status["deferred"]
        assert prom.value("sum(mta_expired_total)") == by_status["expired"]
        assert prom.value("sum(mta_messages_invalid_total)") == by_status["invalid"]
        # every attempt ends in exactly one of these
        assert prom.value("sum(mta_delivery_attempts_total)") == sum(
            by_status[s] for s in ("delivered", "deferred", "bounced", "expired"))
        # held mail comes back and is consumed again: processed counts every consumption
        held = prom.value("sum(mta_not_tried_total)")
        assert prom.value("sum(mta_messages_processed_total)") >= len(final_ids) + len(paused) + 2
        assert prom.value('sum(mta_not_tried_total{reason="paused"})') >= len(paused)
        assert prom.value('sum(mta_not_tried_total{reason="backlog"})') >= len(parked) - in_memory
        assert held >= len(paused) + len(parked) - in_memory
        # bounded labels: busy destinations by name, none by recipient
        labels = {r["metric"]["destination"] for r in prom.query("mta_delivered_total")}
        assert "domain:ok2.test" in labels and any(label.startswith("mx:") for label in labels)
        assert not any("@" in label for label in labels)
        assert prom.value('sum(mta_delivered_total{destination="domain:ok2.test"})') <= len(parked)
        assert prom.value('count(mta_delivery_latency_seconds_count > 0)') == 2  # both lanes
        assert prom.value("sum(mta_delivery_latency_seconds_count)") == accepted
        assert prom.value("sum(mta_dns_lookups_total)") >= 12  # ok1..3 and d0..9, at least once each
        assert prom.value('mta_destinations{state="paused"}') == 1  # ok3.test, by the operator
        assert prom.value("mta_destination_backoff_info") == 0  # paused until resumed

        # every family has HELP text, as Prometheus stored it
        metadata = prom.api("metadata")
        ours = {name: entries for name, entries in metadata.items() if name.startswith("mta_")}
        assert len(ours) >= 20 and all(entries[0]["help"] for entries in ours.values())

        # every panel of the dashboard, through the HTTP API
        empty = []
        queries = dashboard_queries()
        assert len(queries) >= 20
        for title, expr in queries:
            result = prom.query(expr)
            values = [float(r["value"][1]) for r in result]
            if not any(math.isfinite(v) for v in values):
                empty.append((title, expr, result))
        assert not empty, f"{len(empty)} dashboard queries returned no data: {empty}"
