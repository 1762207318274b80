"""Customer smarthosts: mail of a routed sender leaves through the customer's server with
the customer's credentials, over TLS, instead of the recipient's MX; other mail is not
touched. Two routes: by envelope domain to a STARTTLS smarthost on a submission-style port
(password from a file), and by From: domain plus a tag to an implicit-TLS smarthost whose
certificate is verified against the route's CA file (password from the environment). No form of either password shows in the logs or results.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.dns import OK_MX
from tests.testbed.tls import assert_no_secret, tls_farm

STARTTLS_HOST = "127.0.3.1"
IMPLICIT_HOST = "127.0.3.2"
CUSTOMER = ("mailer@customer.test", "c0rrect-h0rse-customer")
BRAND = ("relay@brand.test", "brand-b4ttery-staple")


@pytest.fixture
def smarthosts(test_ca):
    starttls = tls_farm(test_ca, STARTTLS_HOST, ips=[STARTTLS_HOST], auth=dict([CUSTOMER]))
    implicit = tls_farm(test_ca, IMPLICIT_HOST, ips=[IMPLICIT_HOST], implicit=True, auth=dict([BRAND]))
    try:
        yield starttls, implicit
    finally:
        starttls.stop()
        implicit.stop()


@pytest.mark.timeout(180)
def test_routes_deliver_through_smarthosts(vhost, sinks, smarthosts, test_ca, tmp_path, mta_config, start_mta):
    starttls, implicit = smarthosts
    password_file = tmp_path / "customer.secret"
    password_file.write_text(CUSTOMER[1] + "\n")
    config = mta_config(routes=[
        {"name": "brand-vip", "sender_domain": "brand.test", "sender_match": "from", "tags": ["vip"],
         "smarthost": f"[{IMPLICIT_HOST}]:{implicit.port}", "implicit_tls": True,
         "username": BRAND[0], "password_env": "BRAND_SMTP_PASSWORD",
         "tls": "verified", "ca_file": test_ca.ca_file},  # its certificate names the address
        {"sender_domain": "customer.test", "smarthost": f"[{STARTTLS_HOST}]:{starttls.port}",
         "username": CUSTOMER[0], "password_file": str(password_file), "tls": "required",
         "ca_file": test_ca.ca_file},  # credentials go only over a verified certificate
    ])
    mta = start_mta(config, env={"BRAND_SMTP_PASSWORD": BRAND[1]})

    run = run_id()
    customer = {f"c-{run}-{i}": f"u{i}-{run}@ok1.test" for i in range(10)}
    brand_vip = {f"b-{run}-{i}": f"u{i}-{run}@ok2.test" for i in range(5)}
    brand_plain = {f"n-{run}-{i}": f"n{i}-{run}@ok2.test" for i in range(5)}  # no tag: MX
    other = {f"o-{run}-{i}": f"o{i}-{run}@ok1.test" for i in range(5)}  # no route: MX
    bodies = [make_message(i, r, envelope="news@customer.test") for i, r in customer.items()]
    # From: brand.test while MAIL FROM is the bounce domain of an ESP
    bodies += [make_message(i, r, envelope="bounces@esp.test", tags=["vip"],
                            mime=f"From: Brand <shop@brand.test>\r\nTo: <{r}>\r\nMessage-ID: <{i}@test>\r\n"
                                 f"Subject: vip\r\n\r\nhello\r\n") for i, r in brand_vip.items()]
    bodies += [make_message(i, r, envelope="bounces@esp.test",
                            mime=f"From: Brand <shop@brand.test>\r\nTo: <{r}>\r\nMessage-ID: <{i}@test>\r\n"
                                 f"Subject: plain\r\n\r\nhello\r\n") for i, r in brand_plain.items()]
    bodies += [make_message(i, r, envelope="someone@sender.test") for i, r in other.items()]
    publish(vhost, "bulk", bodies)

    collector = ResultCollector(vhost)
    everything = {**customer, **brand_vip, **brand_plain, **other}
    collector.collect(everything, timeout=60, settle=1.0)
    results = assert_each_final(collector.by_id, everything, "delivered")

    # Routed mail went to its smarthost only, authenticated as its route's user, over TLS.
    by_sink = {STARTTLS_HOST: starttls.accepted(), IMPLICIT_HOST: implicit.accepted()}
    assert sorted(a.msg_id for a in by_sink[STARTTLS_HOST]) == sorted(customer)
    assert sorted(a.msg_id for a in by_sink[IMPLICIT_HOST]) == sorted(brand_vip)
    assert {a.login for a in by_sink[STARTTLS_HOST]} == {CUSTOMER[0]}
    assert {a.login for a in by_sink[IMPLICIT_HOST]} == {BRAND[0]}
    assert all(a.cipher for accepted in by_sink.values() for a in accepted)
    assert all(ok for _, ok in starttls.auth_results() + implicit.auth_results()), "a wrong password was sent"
    # ... and nowhere else; unrouted mail took the MX as before.
    mx_ids = {a.msg_id: a.sink for a in sinks.accepted()}
    assert not set(mx_ids) & (set(customer) | set(brand_vip))
    assert {mx_ids[i] for i in other} == {OK_MX[1]} and {mx_ids[i] for i in brand_plain} == {OK_MX[2]}

    # Results name the smarthost and record the TLS of the session.
    for i in customer:
        attempt = results[i]["results"][-1]
        assert (attempt["mx"], attempt["ip"], attempt["tls"]) == (STARTTLS_HOST, STARTTLS_HOST, True)
        assert attempt["cipher"].startswith("TLSv1.")
    for i in brand_vip:
        assert results[i]["results"][-1]["ip"] == IMPLICIT_HOST and results[i]["results"][-1]["tls"] is True

    texts = [mta.log_text()] + [json.dumps(doc) for _, doc in collector.raw]
    assert_no_secret(texts, *CUSTOMER)
    assert_no_secret(texts, *BRAND)


@pytest.mark.timeout(60)
def test_missing_route_password_refuses_to_start(tmp_path, mta_config):
    config = mta_config(routes=[{"sender_domain": "customer.test", "smarthost": "[127.0.3.1]:587",
                                 "username": CUSTOMER[0], "password_env": "NO_SUCH_SMTP_PASSWORD"}])
    env = {k: v for k, v in os.environ.items() if k != "NO_SUCH_SMTP_PASSWORD"}
    proc = subprocess.run([sys.executable, "-m", "mta", "run", config], capture_output=True, text=True,
                          timeout=30, env=env)
    assert proc.returncode == 1
    assert "routes[0] (customer.test): environment variable NO_SUCH_SMTP_PASSWORD is not set" in proc.stderr
