"""`mta check CONFIG --explain DOMAIN` (mta.ops.explain), with the MX given (no DNS): the
destination, the rules applied, each limit with the level it comes from, a provider's
ceilings over a domain entry, and the routes a sender domain's mail leaves by."""

import os

import pytest

from mta.config import parse_config
from mta.ops.explain import explain

RULES = {
    "default": {"connection_limit": 8},
    "providers": {"big": {"mx_suffix": [".big.example"], "connection_limit": 3, "max_message_rate": "10/s"}},
    "domains": {"a.example": {"connection_limit": 20, "max_message_rate": "5/s"},
                "solo.example": {"tls": "required"}},
    "routes": [
        {"sender_domain": "customer.example", "smarthost": "[smtp.office365.com]:587",
         "username": "mailer@customer.example", "password_env": "MTA_TEST_EXPLAIN_PASSWORD",
         "max_message_rate": "6000/h", "connection_limit": 3, "tls": "verified"},
        {"name": "brand-tx", "sender_domain": "*.brand.example", "sender_match": "from", "tags": ["transactional"],
         "smarthost": "[relay.brand.example]:465"},
    ],
}


@pytest.fixture
def config():
    os.environ.setdefault("MTA_TEST_EXPLAIN_PASSWORD", "not used")
    return parse_config(RULES)


def limit(text: str, field: str) -> str:
    line = next(line for line in text.splitlines() if line.strip().startswith(field + " "))
    return " ".join(line.split())


def test_a_domain_of_a_provider(config) -> None:
    text = explain(config, "x.example", mx="mx1.big.example")
    assert "  destination: provider:big" in text
    assert "rules applied: default < providers.big (MX matches .big.example)" in text
    assert limit(text, "connection_limit") == "connection_limit 3 from providers.big"
    assert limit(text, "max_message_rate") == "max_message_rate 10/s from providers.big"
    assert limit(text, "max_age") == "max_age 1d from default"
    assert "route " not in text


def test_a_domain_entry_under_a_provider_shows_the_ceiling(config) -> None:
    text = explain(config, "A.example.", mx="mx1.big.example")
    assert "  destination: domain:a.example" in text
    assert ("  within provider:big: its connection_limit 3 and max_message_rate 10/s bound all its "
            "destinations together") in text
    assert limit(text, "connection_limit") == \
        "connection_limit 3 from provider:big (a ceiling: domains.a.example asks 20)"
    assert limit(text, "max_message_rate") == "max_message_rate 5/s from domains.a.example"


def test_a_domain_entry_elsewhere(config) -> None:
    text = explain(config, "solo.example", mx="mx.solo.example")
    assert "  destination: domain:solo.example" in text and "within" not in text
    assert limit(text, "connection_limit") == "connection_limit 8 from default"
    assert limit(text, "tls") == "tls required from domains.solo.example"


def test_a_sender_domain_shows_its_route_with_smarthost_and_limits(config) -> None:
    text = explain(config, "customer.example", mx="mx.customer.example")
    recipient, route = text.split("\n\n")
    assert "  destination: mx:mx.customer.example" in recipient
    assert route.splitlines()[:4] == [
        "route routes[0] customer.example: mail whose envelope sender domain is customer.example "
        "(tags: any) leaves by the smarthost, not by the recipient's MX",
        "  smarthost: [smtp.office365.com]:587; AUTH as mailer@customer.example",
        "  destination: route:customer.example",
        "  rules applied: default < routes.customer.example (sender domain customer.example)",
    ]
    assert limit(route, "connection_limit") == "connection_limit 3 from routes.customer.example"
    assert limit(route, "max_message_rate") == "max_message_rate 6000/h from routes.customer.example"
    assert limit(route, "tls") == "tls verified from routes.customer.example"
    assert limit(route, "max_age") == "max_age 1d from default"


def test_a_wildcard_route_and_a_route_by_name(config) -> None:
    text = explain(config, "news.brand.example", mx="mx.brand.example")
    assert ("route routes[1] brand-tx: mail whose From: header domain is *.brand.example "
            "(tags: transactional) leaves by the smarthost") in text
    assert "  smarthost: [relay.brand.example]:465\n" in text
    by_name = explain(config, "route:brand-tx")
    assert by_name.splitlines()[0].startswith("route routes[1] brand-tx:")
    assert "  destination: route:brand-tx" in by_name
    assert explain(config, "route:nope").startswith("route:nope: no such route")
