"""A smarthost that refuses a route's password (535) pauses that route: its mail is
deferred with the reason, then held (not bounced, no attempt counted), while other mail
flows; no more AUTH is tried. Writing the right password into the route's password file
resumes the route, and every held message is delivered once. No password shows anywhere.
"""

import json
import subprocess
import sys
import time

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.tls import assert_no_secret, tls_farm

SMARTHOST = "127.0.3.3"
USER = "mailer@customer.test"
RIGHT = "the-right-passw0rd"
WRONG = "an-0ld-expired-passw0rd"


@pytest.fixture
def smarthost(test_ca):
    farm = tls_farm(test_ca, SMARTHOST, ips=[SMARTHOST], auth={USER: RIGHT})
    try:
        yield farm
    finally:
        farm.stop()


@pytest.mark.timeout(240)
def test_wrong_password_pauses_route_until_password_changes(vhost, sinks, smarthost, test_ca, tmp_path, mta_config,
                                                            start_mta):
    password_file = tmp_path / "customer.secret"
    password_file.write_text(WRONG + "\n")
    config = mta_config(
        default={"retry_intervals": ["1s"], "max_age": "5m"},
        routes=[{"sender_domain": "customer.test", "smarthost": f"[{SMARTHOST}]:{smarthost.port}",
                 "username": USER, "password_file": str(password_file), "tls": "required",
                 "ca_file": test_ca.ca_file,
                 "connection_limit": 1}])
    mta = start_mta(config)

    run = run_id()
    routed = {f"r-{run}-{i}": f"u{i}-{run}@ok1.test" for i in range(8)}
    other = {f"o-{run}-{i}": f"o{i}-{run}@ok1.test" for i in range(5)}
    publish(vhost, "bulk", [make_message(i, r, envelope="news@customer.test") for i, r in routed.items()])
    publish(vhost, "bulk", [make_message(i, r, envelope="x@sender.test") for i, r in other.items()])

    collector = ResultCollector(vhost)
    collector.collect(other, timeout=60, settle=1.0, until=lambda c: c.count("deferred") >= 1)
    assert_each_final(collector.by_id, other, "delivered")  # other mail is not held up
    deferred = [doc for _, doc in collector.raw if doc["status"] == "deferred"]
    assert deferred and all(d["id"] in routed for d in deferred)
    attempt = deferred[0]["results"][-1]
    assert attempt["phase"] == "auth" and attempt["code"] == 535
    assert "paused" in attempt["description"] and "credentials" in attempt["description"]
    assert "refused the credentials" in mta.log_text() and "route:customer.test" in mta.log_text()

    # Paused: held, not retried and not bounced; the smarthost sees no new AUTH.
    tries = len(smarthost.auth_results())
    assert tries >= 1 and not any(ok for _, ok in smarthost.auth_results())
    collector.collect((), timeout=6, settle=0)
    assert len(smarthost.auth_results()) == tries, "a paused route tried AUTH again"
    assert collector.count("bounced") == 0 and not any(collector.finals(i) for i in routed)
    assert smarthost.accepted_count() == 0
    # `mta status` says why the route is paused, and shows no secret.
    shown = subprocess.run([sys.executable, "-m", "mta", "status", "--json", "--config", config],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    rows = [row for answer in json.loads(shown.stdout)["mtas"] for row in answer["destinations"]
            if row["destination"] == "route:customer.test"]
    assert rows and rows[0]["state"] == "paused", rows
    assert "authentication" in rows[0]["reason"].lower() and "refused" in rows[0]["reason"], rows
    assert WRONG not in shown.stdout

    password_file.write_text(RIGHT + "\n")
    started = time.monotonic()
    collector.collect(routed, timeout=90, settle=1.0)
    results = assert_each_final(collector.by_id, routed, "delivered")
    assert "route is resumed" in mta.log_text()
    counts = smarthost.count_by_id()
    assert {i: counts.get(i) for i in routed} == {i: 1 for i in routed}
    assert {a.login for a in smarthost.accepted()} == {USER}
    # Deferred ones count their refused attempt; held ones count none.
    assert all(r["attempts"] <= 2 for r in results.values()), [r["attempts"] for r in results.values()]
    assert time.monotonic() - started < 60

    texts = [mta.log_text()] + [json.dumps(doc) for _, doc in collector.raw]
    assert_no_secret(texts, USER, WRONG)
    assert_no_secret(texts, USER, RIGHT)
