"""`inbound:` and `envelope_verp:` (SPEC §8) in the rules file: what they become, and every
problem with its key path."""

import pytest

from mta.config import ConfigError, Inbound, VerpConfig, parse_config


def test_inbound_and_verp_parse() -> None:
    config = parse_config({"inbound": [{"address": "[::1]:2525", "domains": ["Bounces.Example", "*.fbl.example"],
                                        "max_message_size": "1MiB", "max_connections": 20}],
                           "envelope_verp": {"domain": "bounces.example", "prefix": "b", "separator": "-"}})
    assert config.inbound == (Inbound(host="::1", port=2525, domains=("bounces.example", "*.fbl.example"),
                                      max_message_size=1024 * 1024, max_connections=20),)
    assert config.envelope_verp == VerpConfig(prefix="b", domain="bounces.example", separator="-")
    assert parse_config({}).envelope_verp is None and parse_config({}).inbound == ()


def test_every_problem_is_named_with_its_path() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"listeners": [{"address": "127.0.0.1:2525", "tls": "none"}],
                      "sources": {"printer": {"auth": "none", "allow_ips": ["127.0.0.1"]}},
                      "inbound": [{"address": "127.0.0.1:2525", "domains": ["bounces.example"]},
                                  {"domains": []}, {"address": "127.0.0.1:25", "domains": ["x"], "relay": True}],
                      "envelope_verp": {"prefix": "no spaces", "separator": "="}})
    assert caught.value.problems == [
        "inbound[0].address: 127.0.0.1:2525 is given twice (listeners and inbound listen apart)",
        "inbound[1].domains: expected a non-empty list of strings, got []",
        "inbound[1].address: required",
        "inbound[2].relay: unknown key",
        "envelope_verp.prefix: 'no spaces': expected up to 32 letters, digits, dots, '-' or '_' (a local part's start)",
        "envelope_verp.separator: expected one of +, -, got '='",
        "envelope_verp.domain: required",
    ]
