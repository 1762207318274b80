"""A route's credentials go only over TLS whose certificate verified for the smarthost: a
smarthost with a certificate for another name (its chain is trusted) or without TLS at all
is sent no AUTH and no mail, and the mail is deferred saying why; a route with `tls_verify:
false` authenticates over the same unverified TLS, and the start of the MTA warns of it.
"""

import json

import pytest

from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import assert_each_final, run_id
from tests.testbed.sinks import SinkFarm
from tests.testbed.tls import assert_no_secret, tls_farm

TLS_HOST = "127.0.3.6"  # STARTTLS with a certificate for smtp.customer.test, not for its address
PLAIN_HOST = "127.0.3.7"  # no STARTTLS
STRICT = ("mailer@customer.test", "str1ct-pa55word")
LAX = ("relay@lax.test", "l4x-pa55word-here")


@pytest.fixture
def smarthosts(test_ca):
    tls = tls_farm(test_ca, TLS_HOST, names=["smtp.customer.test"], auth=dict([STRICT, LAX]))
    plain = SinkFarm([PLAIN_HOST], use_uvloop=False, auth=dict([STRICT])).start()
    try:
        yield tls, plain
    finally:
        tls.stop()
        plain.stop()


@pytest.mark.timeout(120)
def test_credentials_only_over_verified_tls(vhost, sinks, smarthosts, test_ca, mta_config, start_mta):
    tls, plain = smarthosts
    strict = {"username": STRICT[0], "password_env": "STRICT_PASSWORD", "ca_file": test_ca.ca_file}
    config = mta_config(default={"retry_intervals": ["1s"], "max_age": "3s"}, routes=[
        {"name": "unverified", "sender_domain": "customer.test", "smarthost": f"[{TLS_HOST}]:{tls.port}", **strict},
        {"name": "plaintext", "sender_domain": "plain.test", "smarthost": f"[{PLAIN_HOST}]:{plain.port}", **strict},
        {"name": "lax", "sender_domain": "lax.test", "smarthost": f"[{TLS_HOST}]:{tls.port}",
         "username": LAX[0], "password_env": "LAX_PASSWORD", "tls_verify": False},
    ])
    mta = start_mta(config, env={"STRICT_PASSWORD": STRICT[1], "LAX_PASSWORD": LAX[1]})
    assert "routes[2] (lax): tls_verify is false" in mta.log_text()
    assert "routes[0]" not in mta.log_text() and "routes[1]" not in mta.log_text()

    run = run_id()
    unverified = {f"u-{run}-{i}": f"u{i}-{run}@ok1.test" for i in range(3)}
    plaintext = {f"p-{run}-{i}": f"p{i}-{run}@ok1.test" for i in range(3)}
    lax = {f"l-{run}-{i}": f"l{i}-{run}@ok1.test" for i in range(3)}
    publish(vhost, "bulk", [make_message(i, r, envelope="news@customer.test") for i, r in unverified.items()]
            + [make_message(i, r, envelope="news@plain.test") for i, r in plaintext.items()]
            + [make_message(i, r, envelope="news@lax.test") for i, r in lax.items()])

    collector = ResultCollector(vhost)
    everything = {**unverified, **plaintext, **lax}
    collector.collect(everything, timeout=60, settle=1.0)
    assert_each_final(collector.by_id, lax, "delivered")
    for group, why in ((unverified, "not accepted"), (plaintext, "does not offer STARTTLS")):
        for i, final in assert_each_final(collector.by_id, group, "expired").items():
            assert "deferred" in [r["status"] for r in collector.by_id[i]]
            for attempt in final["results"]:
                assert attempt["phase"] == "tls" and attempt["code"] is None, attempt
                text = attempt["description"]
                assert why in text and "credentials of this route go only over TLS verified" in text, text

    # AUTH went only to the lax route's sessions; the plaintext smarthost was sent none.
    assert {login for login, _ in tls.auth_results()} == {LAX[0]}
    assert tls.auth_commands()[TLS_HOST] == len(tls.auth_results())
    assert plain.auth_commands() == {} and plain.auth_results() == []
    assert sorted(a.msg_id for a in tls.accepted()) == sorted(lax)
    assert {a.login for a in tls.accepted()} == {LAX[0]} and plain.accepted() == []

    texts = [mta.log_text()] + [json.dumps(doc) for _, doc in collector.raw]
    assert_no_secret(texts, *STRICT)
    assert_no_secret(texts, *LAX)
