"""Write MTA YAML configs (SPEC §3) for tests."""

from __future__ import annotations

import copy
from typing import Any, Dict

import yaml


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


#: use as an override value to remove a key from the defaults
DELETE = _Delete()

TEST_DEFAULT_LIMITS: Dict[str, Any] = {
    "connection_limit": 10,
    "max_message_rate": "10000/s",
    "max_connection_rate": "10000/min",
    "max_deliveries_per_connection": 100,
    "idle_timeout": "5s",
    "retry_intervals": ["1s", "2s"],
    "max_age": "30s",
    "tls": "opportunistic",
}


def deep_merge(base: Dict[str, Any], overrides: Dict[str, Any]) -> Dict[str, Any]:
    """A new dict: ``base`` with ``overrides`` merged in (dicts recursively; other values
    replace; ``DELETE`` removes the key)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is DELETE:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def base_config(amqp_url: str, dns_port: int, smtp_port: int) -> Dict[str, Any]:
    return {
        "broker": {"url": amqp_url},
        "dns": {"nameservers": ["127.0.0.1"], "port": int(dns_port)},
        "smtp": {"port": int(smtp_port), "helo": "mta.test"},
        "metrics": {"port": 0},
        "default": dict(TEST_DEFAULT_LIMITS),
    }


def build_config(amqp_url: str, dns_port: int, smtp_port: int, **overrides: Any) -> Dict[str, Any]:
    return deep_merge(base_config(amqp_url, dns_port, smtp_port), overrides)


def write_config(path: str, amqp_url: str, dns_port: int, smtp_port: int,
                 **overrides: Any) -> str:
    """Write the YAML config to ``path`` and return ``path``.

    ``overrides`` deep-merge into the defaults, e.g.
    ``write_config(p, url, 5354, 2525, default={"max_age": "4s"}, broker={"prefetch": 200})``.
    """
    cfg = build_config(amqp_url, dns_port, smtp_port, **overrides)
    with open(path, "w") as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return path
