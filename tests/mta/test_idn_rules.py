"""Rules written with international domain names apply to the mail they name: the rules
file, the recipient and sender addresses and the From header all come to the same A-label
form (IDNA 2008, UTS #46 non-transitional: faß.de is xn--fa-hia.de), whichever form each
was written in."""

from __future__ import annotations

import orjson
import pytest

from mta.config import parse_config
from mta.ops.control import Pauses
from mta.intake.message import decode
from mta.routing.mx import MxAnswer, MxHost
from mta.routing.routes import RouteTable, from_domain
from mta.routing.rules import Rules


def job(recipient: str, envelope: str = "news@sender.example", from_header: str = "<news@sender.example>"):
    mime = f"From: {from_header}\r\nSubject: s\r\n\r\nbody\r\n"
    return decode(orjson.dumps({"recipient": recipient, "envelope": envelope, "mime": mime}), {}, "bulk", 0.0)


@pytest.mark.parametrize("recipient", ["user@faß.de", "user@xn--fa-hia.de", "user@FAß.DE", "user@XN--FA-HIA.DE"])
def test_a_domains_entry_written_in_unicode_applies_to_its_mail_in_either_form(recipient):
    rules = Rules(parse_config({"domains": {"faß.de": {"connection_limit": 3}}}))
    resolved = rules.resolve(job(recipient).domain, None)
    assert resolved.key == "domain:xn--fa-hia.de"
    assert resolved.policy.connection_limit == 3
    assert "domains.xn--fa-hia.de" in resolved.why


@pytest.mark.parametrize("written", ["xn--fa-hia.de", "faß.de"])
def test_idna_2003_form_is_another_domain(written):
    rules = Rules(parse_config({"domains": {written: {"connection_limit": 3}}}))
    assert rules.resolve(job("user@fass.de").domain, None).key == "mx:"


@pytest.mark.parametrize("recipient", ["user@mail.faß.de", "user@mail.xn--fa-hia.de"])
def test_a_wildcard_written_in_unicode_applies_to_subdomains(recipient):
    rules = Rules(parse_config({"domains": {"*.faß.de": {"connection_limit": 2}}}))
    resolved = rules.resolve(job(recipient).domain, None)
    assert resolved.key == "domain:*.xn--fa-hia.de" and resolved.policy.connection_limit == 2


def test_a_provider_mx_suffix_written_in_unicode_matches_the_mx_host_dns_gives():
    rules = Rules(parse_config({"providers": {"buch": {"mx_suffix": [".bücher.example"], "connection_limit": 4}}}))
    answer = MxAnswer((MxHost("mx1.xn--bcher-kva.example", 10, ("192.0.2.1",)),))
    resolved = rules.resolve(job("user@shop.example").domain, answer)
    assert resolved.key == "provider:buch" and resolved.policy.connection_limit == 4


def routes(**route):
    config = parse_config({"routes": [{"smarthost": "[192.0.2.9]:587", **route}]})
    return RouteTable(config.routes, Rules(config), Pauses(), lambda: 0.0, {})


@pytest.mark.parametrize("envelope", ["news@faß.de", "news@xn--fa-hia.de"])
def test_a_route_for_a_unicode_sender_domain_takes_its_envelope_in_either_form(envelope):
    table = routes(sender_domain="faß.de")
    entry = table.match(job("user@dest.example", envelope=envelope))
    assert entry is not None and entry.key == "route:xn--fa-hia.de"


@pytest.mark.parametrize("sender", ["news@faß.de", "news@xn--fa-hia.de", "news@FAß.de"])
def test_a_from_route_for_a_unicode_domain_takes_its_from_header_in_either_form(sender):
    table = routes(sender_domain="faß.de", sender_match="from", name="fass")
    entry = table.match(job("user@dest.example", from_header=f"News <{sender}>"))
    assert entry is not None and entry.key == "route:fass"


def test_from_domain_is_in_a_label_form():
    assert from_domain("From: <a@Faß.de>\r\n\r\n".encode()) == "xn--fa-hia.de"
