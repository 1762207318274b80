"""`listeners:` and `sources:` (SPEC §7): values, and the combinations refused because they
would make an open relay or send passwords in clear, each with its key path."""

import pytest

from mta.config import ConfigError, parse_config

CERTS = {"cert_file": "/etc/mta/s.crt", "key_file": "/etc/mta/s.key"}


def _problems(raw) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(raw)
    return exc.value.problems


def test_a_full_submission_section():
    config = parse_config({
        "listeners": [{"address": "0.0.0.0:587", "tls": "starttls", **CERTS},
                      {"address": "[::]:465", "tls": "implicit", **CERTS},
                      {"address": "127.0.0.1:2525", "tls": "none", "proxy_protocol": True,
                       "proxy_from": ["10.0.0.0/8"]}],
        "sources": {
            "webshop": {"users": [{"username": "shop", "password_env": "SHOP_PW"}],
                        "allow_ips": ["192.0.2.0/24", "2001:db8::/32"], "sender_domains": ["shop.example", "*.shop.example"],
                        "lane": "bulk", "tags": ["webshop"], "max_message_rate": "600/min", "max_recipients": 50,
                        "max_message_size": "10MiB", "line_endings": "normalize"},
            "printer": {"auth": "none", "allow_ips": ["127.0.0.1"]},
        },
    })
    assert [l.address for l in config.listeners] == ["0.0.0.0:587", "[::]:465", "127.0.0.1:2525"]
    shop = config.sources[0]
    assert shop.max_message_size == 10 * 1024 * 1024 and shop.lane == "bulk" and shop.max_recipients == 50
    assert shop.allow_ips == ("192.0.2.0/24", "2001:db8::/32")
    assert config.sources[1].allow_ips == ("127.0.0.1/32",)


def test_unsafe_combinations_are_refused_together_with_their_paths():
    problems = _problems({
        "listeners": [{"address": "0.0.0.0:25", "tls": "none"}, {"address": "127.0.0.1:587", "tls": "starttls"},
                      {"address": "127.0.0.1:2525", "tls": "none", "proxy_protocol": True}],
        "sources": {
            "printer": {"auth": "none"},
            "shop": {"users": [{"username": "shop", "password": "hunter2"}], "allow_ips": ["192.0.2.1/24"]},
            "crm": {"users": [{"username": "shop", "password_env": "A", "password_hash": "$scrypt$x"}]},
            "nobody": {"lane": "express"},
        },
    })
    text = "\n".join(problems)
    for expected in [
        "listeners[0].tls: tls: none on 0.0.0.0:25, which is not loopback",
        "listeners[1].cert_file: required for tls: starttls",
        "listeners[2].proxy_from: required with proxy_protocol",
        "sources.printer.allow_ips: required with auth: none",
        "sources.shop.users[0].password: passwords are not written in the rules file",
        "sources.shop.allow_ips: [0] invalid network '192.0.2.1/24': 192.0.2.1/24 has host bits set",
        "sources.crm.users[0]: give exactly one of password_env, password_file, password_hash",
        "sources.crm.users[0].username: 'shop' is also a user of sources.shop",
        "sources.crm.users[0].password_hash: not an scrypt hash",
        "sources.nobody.lane: expected one of single, bulk",
        "sources.nobody.users: required (or auth: none with allow_ips)",
    ]:
        assert expected in text, (expected, problems)


def test_listeners_need_sources_and_sources_listeners():
    assert any(p.startswith("sources: listeners are configured")
               for p in _problems({"listeners": [{"address": "127.0.0.1:2525", "tls": "none"}]}))
    assert any(p.startswith("listeners: sources are configured")
               for p in _problems({"sources": {"p": {"auth": "none", "allow_ips": ["127.0.0.1"]}}}))


def test_two_sources_known_by_the_same_address_are_refused():
    problems = _problems({"listeners": [{"address": "127.0.0.1:2525", "tls": "none"}],
                          "sources": {"a": {"auth": "none", "allow_ips": ["10.1.0.0/16"]},
                                      "b": {"auth": "none", "allow_ips": ["10.1.0.0/16"]}}})
    assert "sources.b.allow_ips: 10.1.0.0/16 also identifies sources.a" in problems[0]


@pytest.mark.parametrize("value,problem", [("10 parsecs", "expected a size"), (0, "above zero"), (True, "expected a size")])
def test_sizes(value, problem):
    raw = {"listeners": [{"address": "127.0.0.1:2525", "tls": "none"}],
           "sources": {"p": {"auth": "none", "allow_ips": ["127.0.0.1"], "max_message_size": value}}}
    assert problem in "\n".join(_problems(raw))
