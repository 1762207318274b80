"""The attempt's bounds in the rules file: `smtp.delivery_deadline`, `smtp.max_mx_hosts`,
`smtp.max_addresses_per_mx`; a step's timeout may not outlast the whole attempt."""

import pytest

from mta.config import ConfigError, parse_config


def test_defaults() -> None:
    smtp = parse_config({}).smtp
    assert (smtp.delivery_deadline, smtp.max_mx_hosts, smtp.max_addresses_per_mx) == (300.0, 5, 2)


def test_set_and_checked() -> None:
    smtp = parse_config({"smtp": {"delivery_deadline": "2m", "max_mx_hosts": 3, "max_addresses_per_mx": 1}}).smtp
    assert (smtp.delivery_deadline, smtp.max_mx_hosts, smtp.max_addresses_per_mx) == (120.0, 3, 1)
    with pytest.raises(ConfigError) as bad:
        parse_config({"smtp": {"delivery_deadline": "0s", "max_mx_hosts": 0}})
    assert [p.split(":")[0] for p in bad.value.problems] == ["smtp.delivery_deadline", "smtp.max_mx_hosts"]


def test_a_timeout_longer_than_the_deadline_is_refused_with_its_path() -> None:
    with pytest.raises(ConfigError) as bad:
        parse_config({"smtp": {"delivery_deadline": "1m"}, "default": {"connect_timeout": "30s"},
                      "providers": {"big": {"mx_suffix": [".big.example"], "data_dot_timeout": "90s"}},
                      "domains": {"a.example": {"idle_timeout": "5m", "ehlo_timeout": "2m"}}})
    assert bad.value.problems == [
        "providers.big.data_dot_timeout: 90s is longer than smtp.delivery_deadline (1m), which ends every delivery attempt",
        "domains.a.example.ehlo_timeout: 2m is longer than smtp.delivery_deadline (1m), which ends every delivery attempt",
    ]
