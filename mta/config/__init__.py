"""The YAML rules file, loaded into frozen typed objects.

Every problem in a file is collected with its key path (`domains.slow.example.max_message_rate:
invalid rate '20/our': unknown period 'our'`) and reported together: an operator fixes a
file in one pass, and a bad file never starts the MTA or replaces the rules in force.
Unknown keys are errors too: a typo must not silently fall back to a default.

The typed objects are in `model`, what each key may hold in `checks`, reading a file in
`parse`; every name the rest of the MTA uses is here.
"""

from mta.config.model import (
    DEFAULT_POLICY,
    Broker,
    Config,
    ConfigError,
    Cluster,
    Control,
    DkimKey,
    Dns,
    Domain,
    Inbound,
    Listener,
    Metrics,
    MtaSts,
    Pattern,
    Policy,
    Provider,
    Route,
    Smtp,
    Source,
    SourceUser,
    Suppression,
    Tracking,
    VerpConfig,
    merge,
)
from mta.config.parse import load_config, parse_config, retry_notes

__all__ = [
    "DEFAULT_POLICY", "Broker", "Cluster", "Config", "ConfigError", "Control", "DkimKey", "Dns", "Domain", "Inbound", "Listener", "Metrics", "MtaSts",
    "Pattern", "Policy", "Provider", "Route", "Smtp", "Source", "SourceUser", "Suppression", "Tracking", "VerpConfig", "load_config", "merge", "parse_config", "retry_notes",
]
