"""MTA-STS (RFC 8461) end to end: a zone of our own publishing `_mta-sts` TXT records and
`mta-sts.<domain>` hosts, a policy server with a certificate of the test CA
(`mta_sts.ca_file`, `mta_sts.port`), and receivers with a valid certificate, a wrong one,
and no STARTTLS, all on one port. The rules' `tls: dane` (the default) honours what the
domains publish."""

from __future__ import annotations

import email
import gzip
import json
import os
import subprocess
import sys
import time

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import assert_each_final, parse_time, run_id
from tests.testbed.config import deep_merge, write_config
from tests.testbed.dns import Dnsmasq, txt_record
from tests.testbed.sinks import SinkFarm
from tests.testbed.sts import HANG, HUGE, PolicyServer, policy_text
from tests.testbed.util import free_port

GOOD, BADCERT, PLAIN = "127.0.3.1", "127.0.3.2", "127.0.3.3"
# domain -> (address of its MX host mx.<domain>, TXT id or None)
ZONE = {"good.test": (GOOD, "1"), "wrongmx.test": (GOOD, "1"), "badcert.test": (BADCERT, "1"),
        "plain.test": (PLAIN, "1"), "testing.test": (BADCERT, "1"), "hang.test": (GOOD, "1"),
        "big.test": (GOOD, "1"), "moved.test": (GOOD, "1"), "change.test": (GOOD, "1"),
        "restart.test": (GOOD, "1"), "reports.test": (GOOD, None)}


def records(zone: dict, policy_port: int) -> list[str]:
    rr = []
    for domain, (address, policy_id) in zone.items():
        rr += [f"mx-host={domain},mx.{domain},10", f"host-record=mx.{domain},{address}",
               f"host-record=mta-sts.{domain},127.0.0.1"]
        if policy_id is not None:
            rr.append(txt_record(f"_mta-sts.{domain}", f"v=STSv1; id={policy_id};"))
    return rr + [txt_record("_smtp._tls.testing.test", "v=TLSRPTv1; rua=mailto:tlsrpt@reports.test")]


@pytest.fixture(scope="module")
def bed(test_ca):
    """Receivers (one port: smtp.port) and the policy server; each test gets its own zone."""
    port = free_port([GOOD, BADCERT, PLAIN])
    good = SinkFarm([GOOD], port, use_uvloop=False,
                    tls_context=test_ca.server_context([f"mx.{d}" for d, (a, _) in ZONE.items() if a == GOOD]))
    bad = SinkFarm([BADCERT], port, use_uvloop=False, tls_context=test_ca.server_context(["someone-else.test"]))
    plain = SinkFarm([PLAIN], port, use_uvloop=False)
    policies = PolicyServer(test_ca, ZONE)
    farms = [f.start() for f in (good, bad, plain)]
    policies.start()
    try:
        yield {"port": port, "policies": policies, "good": good}
    finally:
        policies.stop()
        for farm in farms:
            farm.stop()


@pytest.fixture
def zone(bed):
    bed["policies"].answers.clear()  # each test says what its domains' policy hosts answer
    server = Dnsmasq(records=records(ZONE, bed["policies"].port))
    server.start()
    yield server
    server.stop()


def config(tmp_path, vhost, bed, zone, test_ca, **overrides) -> str:
    settings = deep_merge({
        "dns": {"min_ttl": "1s"}, "smtp": {"ca_file": test_ca.ca_file},
        "mta_sts": {"ca_file": test_ca.ca_file, "port": bed["policies"].port, "wait": "2s", "timeout": "20s"},
        "default": {"tls": "dane", "retry_intervals": ["1s"], "max_age": "8s"}}, overrides)
    return write_config(str(tmp_path / "mta.yaml"), vhost, zone.port, bed["port"], **settings)


def serve(bed, **answers) -> None:
    bed["policies"].answers.update({d.replace("_", "."): a for d, a in answers.items()})


@pytest.mark.timeout(120)
def test_enforce_and_testing_policies(vhost, bed, zone, test_ca, tmp_path, start_mta):
    serve(bed, good_test=policy_text("enforce", ["mx.good.test"]),
          wrongmx_test=policy_text("enforce", ["*.elsewhere.test"]),
          badcert_test=policy_text("enforce", ["mx.badcert.test"]),
          plain_test=policy_text("enforce", ["*.plain.test"]),
          testing_test=policy_text("testing", ["mx.testing.test"]))
    path = config(tmp_path, vhost, bed, zone, test_ca, mta_sts={"report_from": "tlsrpt@sender.test"})
    start_mta(path)
    run = run_id()
    ids = {f"{d}-{run}": f"u-{run}@{d}" for d in ("good.test", "wrongmx.test", "badcert.test", "plain.test",
                                                  "testing.test")}
    publish(vhost, "bulk", [make_message(i, r) for i, r in ids.items()])
    collector = ResultCollector(vhost)
    collector.collect(ids, timeout=60)

    good = assert_each_final(collector.by_id, [f"good.test-{run}"], "delivered")[f"good.test-{run}"]
    attempt = good["results"][-1]
    assert attempt["tls"] is True and attempt["tls_policy"] == "mta-sts-enforce" and attempt["mx"] == "mx.good.test"

    expected = {"wrongmx.test": "none of its MX hosts (mx.wrongmx.test) matches",
                "badcert.test": "mismatch", "plain.test": "does not offer STARTTLS"}
    for domain, reason in expected.items():
        result = assert_each_final(collector.by_id, [f"{domain}-{run}"], "expired")[f"{domain}-{run}"]
        assert len(result["results"]) >= 2
        for attempt in result["results"]:
            assert attempt["phase"] == "tls" and attempt["tls"] is False, attempt
            assert attempt["tls_policy"] == "mta-sts-enforce"
            assert "MTA-STS policy" in attempt["description"] and reason in attempt["description"], attempt

    testing = assert_each_final(collector.by_id, [f"testing.test-{run}"], "delivered")[f"testing.test-{run}"]
    assert testing["results"][-1]["tls_policy"] == "mta-sts-testing" and testing["results"][-1]["tls"] is True

    day = time.strftime("%Y-%m-%d", time.gmtime())
    report = _report(f"{path}.tlsrpt/{day}_testing.test.json", timeout=20)
    entry = report["policies"][0]
    assert entry["policy"]["policy-type"] == "sts" and entry["policy"]["policy-domain"] == "testing.test"
    assert entry["policy"]["mx-host"] == ["mx.testing.test"]
    assert entry["summary"] == {"total-successful-session-count": 0, "total-failure-session-count": 1}
    assert entry["failure-details"][0]["result-type"] == "certificate-host-mismatch"
    assert entry["failure-details"][0]["receiving-mx-hostname"] == "mx.testing.test"
    assert report["date-range"]["start-datetime"] == f"{day}T00:00:00Z"
    good_report = _report(f"{path}.tlsrpt/{day}_good.test.json", timeout=20)
    assert good_report["policies"][0]["summary"]["total-successful-session-count"] == 1

    # Mailed through the MTA itself to the rua of testing.test (good.test publishes none).
    assert "good.test: no _smtp._tls record" in _cli(path, "tls-reports", "-c", path, "--day", day, "--send")
    mailed = _wait_for(lambda: [a for a in bed["good"].accepted() if a.rcpt == "tlsrpt@reports.test"], 30)
    message = email.message_from_bytes(mailed[0].data)
    assert message["TLS-Report-Domain"] == "testing.test" and mailed[0].mail_from == "tlsrpt@sender.test"
    [attached] = [p for p in message.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
    assert json.loads(gzip.decompress(attached.get_payload(decode=True))) == report
    assert "(mailed)" in _cli(path, "tls-reports", "-c", path, "--day", day)


def _cli(path: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "mta", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _wait_for(found, timeout: float):
    deadline = time.monotonic() + timeout
    while not (result := found()):
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.2)
    return result


def _report(path: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"no TLS-RPT report {path}"
        time.sleep(0.2)
    with open(path) as fh:
        return json.load(fh)


@pytest.mark.timeout(120)
def test_a_policy_host_that_hangs_redirects_or_is_huge_does_not_stall_mail(vhost, bed, zone, test_ca, tmp_path,
                                                                          start_mta):
    serve(bed, hang_test=HANG, big_test=HUGE, moved_test=301)
    path = config(tmp_path, vhost, bed, zone, test_ca)
    start_mta(path)
    run = run_id()
    ids = {f"{d}-{run}": f"u-{run}@{d}" for d in ("hang.test", "big.test", "moved.test")}
    sent = time.time()
    publish(vhost, "bulk", [make_message(i, r) for i, r in ids.items()])
    collector = ResultCollector(vhost)
    collector.collect(ids, timeout=30)
    delivered = assert_each_final(collector.by_id, ids, "delivered")
    for result in delivered.values():
        attempt = result["results"][-1]
        assert attempt["tls_policy"] == "opportunistic" and attempt["tls"] is True
        # the fetch of hang.test goes on for mta_sts.timeout (20 s); mail waited mta_sts.wait (2 s)
        assert parse_time(attempt["time"]) - sent < 8, attempt
    assert bed["policies"].fetches["hang.test"] >= 1 and bed["policies"].fetches["big.test"] >= 1
    # TLS-RPT: a published policy that could not be had is a failure of each session (RFC 8460 §4.3).
    day = time.strftime("%Y-%m-%d", time.gmtime())
    for domain in ("big.test", "moved.test"):
        [entry] = _report(f"{path}.tlsrpt/{day}_{domain}.json", timeout=20)["policies"]
        assert entry["policy"] == {"policy-type": "sts", "policy-string": [], "policy-domain": domain}
        assert [d["result-type"] for d in entry["failure-details"]] == ["sts-policy-fetch-error"]


@pytest.mark.timeout(120)
def test_a_new_txt_id_fetches_the_new_policy(vhost, bed, zone, test_ca, tmp_path, start_mta):
    serve(bed, change_test=policy_text("enforce", ["*.elsewhere.test"]))
    fetches = bed["policies"].fetches.get("change.test", 0)
    start_mta(config(tmp_path, vhost, bed, zone, test_ca, default={"max_age": "60s"}))
    run = run_id()
    msg = f"change-{run}"
    publish(vhost, "bulk", [make_message(msg, f"u-{run}@change.test")])
    collector = ResultCollector(vhost)
    collector.collect(timeout=10, until=lambda c: len(c.by_id.get(msg, [])) >= 2)
    assert all(r["status"] == "deferred" and r["results"][-1]["phase"] == "tls" for r in collector.by_id[msg])

    serve(bed, change_test=policy_text("enforce", ["mx.change.test"]))  # a new policy, the old id
    collector.collect(timeout=8, until=lambda c: False)  # beyond the TXT record's TTL (5 s): looked at again
    assert collector.by_id[msg][-1]["status"] == "deferred"  # same id: the cached policy stays
    assert bed["policies"].fetches["change.test"] == fetches + 1

    zone.reload(records({**ZONE, "change.test": (GOOD, "2")}, bed["policies"].port))
    collector.collect([msg], timeout=30)
    result = assert_each_final(collector.by_id, [msg], "delivered")[msg]
    assert result["results"][-1]["tls_policy"] == "mta-sts-enforce" and result["results"][-1]["tls"] is True
    assert bed["policies"].fetches["change.test"] == fetches + 2


@pytest.mark.timeout(120)
def test_policies_survive_a_restart(vhost, bed, zone, test_ca, tmp_path, start_mta):
    serve(bed, restart_test=policy_text("enforce", ["mx.restart.test"]))
    path = config(tmp_path, vhost, bed, zone, test_ca)
    first = start_mta(path)
    run = run_id()
    publish(vhost, "bulk", [make_message(f"r1-{run}", f"u-{run}@restart.test")])
    collector = ResultCollector(vhost)
    collector.collect([f"r1-{run}"], timeout=30)
    assert_each_final(collector.by_id, [f"r1-{run}"], "delivered")
    first.terminate()
    with open(f"{path}.mta-sts.json") as fh:
        assert json.load(fh)["policies"]["restart.test"]["mx"] == ["mx.restart.test"]

    # Now its policy server fails and its MX host shows a certificate for another name:
    # without the kept policy the mail would go (a fetch failure never blocks mail).
    serve(bed, restart_test=500)
    zone.reload(records({**ZONE, "restart.test": (BADCERT, "1")}, bed["policies"].port))
    start_mta(path)
    publish(vhost, "bulk", [make_message(f"r2-{run}", f"u-{run}@restart.test")])
    collector.collect([f"r2-{run}"], timeout=30)
    result = assert_each_final(collector.by_id, [f"r2-{run}"], "expired")[f"r2-{run}"]
    for attempt in result["results"]:
        assert attempt["phase"] == "tls" and attempt["tls_policy"] == "mta-sts-enforce"
        assert "MTA-STS policy" in attempt["description"] and "mismatch" in attempt["description"]


def _explain(path: str, domain: str) -> str:
    return _cli(path, "check", path, "--explain", domain)


@pytest.mark.timeout(120)
def test_explain_shows_the_policy_in_force(vhost, bed, zone, test_ca, tmp_path):
    serve(bed, good_test=policy_text("enforce", ["mx.good.test"]),
          wrongmx_test=policy_text("enforce", ["*.elsewhere.test"]))
    path = config(tmp_path, vhost, bed, zone, test_ca)
    shown = _explain(path, "good.test")
    assert "MTA-STS: policy id 1: mode enforce, mx mx.good.test, max_age 86400s" in shown
    assert "MX hosts the policy allows: mx.good.test" in shown
    assert "TLS in force: MTA-STS policy" in shown
    assert "none (its mail is deferred)" in _explain(path, "wrongmx.test")
    serve(bed, hang_test=500)
    assert "HTTP 500" in _explain(path, "hang.test")
    opportunistic = config(tmp_path, vhost, bed, zone, test_ca, default={"tls": "opportunistic"})
    assert "not consulted" in _explain(opportunistic, "good.test")


@pytest.mark.timeout(120)
def test_a_pause_of_the_mx_destination_holds_its_mta_sts_mail_too(vhost, bed, zone, test_ca, tmp_path, start_mta):
    serve(bed, good_test=policy_text("enforce", ["mx.good.test"]))
    path = config(tmp_path, vhost, bed, zone, test_ca, default={"max_age": "60s"})
    mta = start_mta(path)
    _wait_for(lambda: "consuming" in mta.log_text(), 30)
    assert "acknowledged by 1 MTA(s)" in _cli(path, "pause", "mx:mx.good.test", "--config", path)
    run = run_id()
    held = {f"h-{run}-{i}": f"u{i}-{run}@good.test" for i in range(3)}
    publish(vhost, "bulk", [make_message(i, r) for i, r in held.items()])
    collector = ResultCollector(vhost)
    collector.collect(timeout=5, until=lambda c: False)
    assert not any(collector.by_id.get(i) for i in held), "paused mail was tried"
    assert not set(bed["good"].count_by_id()) & set(held)

    assert "acknowledged by 1 MTA(s)" in _cli(path, "resume", "mx:mx.good.test", "--config", path)
    collector.collect(held, timeout=60)
    for result in assert_each_final(collector.by_id, held, "delivered").values():
        assert result["results"][-1]["tls_policy"] == "mta-sts-enforce"
