"""Reload: the rules file read again (SIGHUP, `mta reload`) and put in force on a running
engine. New limits and patterns apply to live destinations at once, sessions on the wire
finish; a bad file changes nothing. The sections that shape the process itself (broker,
dns, mta_sts, smtp, metrics, control, listeners, sources, suppression, inbound,
envelope_verp, tracking) take effect only after a restart.
"""

from __future__ import annotations

import logging

import msgspec

from mta.config import Config, ConfigError, load_config
from mta.routing.rules import Rules

log = logging.getLogger("mta.reload")


def reload(engine) -> bool:
    """Re-read the rules file (SIGHUP, `mta reload`): new limits and patterns apply to
    live destinations at once, sessions on the wire finish; a bad file changes nothing."""
    if engine.config_path is None:
        log.warning("reload asked for, but the rules did not come from a file; nothing changed")
        return False
    try:
        config, rules, keys = _reread(engine)
    except ConfigError as exc:
        log.error("reload of %s refused, the old rules stay in force: %s", engine.config_path,
                  "; ".join(exc.problems))
        return False
    engine.config, engine.rules = config, rules
    engine.outcomes.rules, engine.outcomes.default = rules, config.default
    engine.router.reload(engine.rules)
    engine.shares.reload(engine.rules)
    if keys is not None:
        if engine.signer is None:
            from mta.dkim.signer import Signer  # (not loaded by an engine without keys: a start's CPU)

            engine.signer = Signer(keys, engine.router.route, engine.outcomes.not_signed)
            engine.signer.observe = engine.metrics.observe_dkim_signing
        else:
            engine.signer.reload(keys)
    _reapply(engine)
    log.info("reloaded %s: %d domain rules, %d providers, %d patterns", engine.config_path,
             len(engine.config.domains), len(engine.config.providers), len(engine.config.patterns))
    return True


def _reread(engine) -> tuple[Config, Rules, list | None]:
    """The rules file read again, its rules, and its DKIM keys if they changed; the routes
    take their new entries. ConfigError, all or nothing, when anything is wrong."""
    config = load_config(engine.config_path)
    for section in ("broker", "dns", "mta_sts", "smtp", "metrics", "control", "listeners", "sources", "suppression",
                    "inbound", "envelope_verp", "tracking"):
        if getattr(config, section) != getattr(engine.config, section):
            log.warning("reload: section %s changed; it takes effect only after a restart", section)
    config = msgspec.structs.replace(config, broker=engine.config.broker, dns=engine.config.dns,
                                     mta_sts=engine.config.mta_sts, smtp=engine.config.smtp, metrics=engine.config.metrics,
                                     control=engine.config.control, listeners=engine.config.listeners,
                                     sources=engine.config.sources, suppression=engine.config.suppression,
                                     inbound=engine.config.inbound, envelope_verp=engine.config.envelope_verp,
                                     tracking=engine.config.tracking)
    rules = Rules(config)
    keys = None
    if config.dkim != engine.config.dkim:
        from mta.dkim.signer import load_keys

        keys, _ = load_keys(config.dkim)  # all or nothing, like the rest of the file
    engine.routes.reload(config.routes, rules)
    return config, rules, keys


def _reapply(engine) -> None:
    """The reloaded rules, on every live destination."""
    for destination in engine.destinations.values():
        destination.patterns = engine.rules.patterns
        if destination.key.startswith("route:"):
            entry = engine.routes.entry(destination.key)
            resolved = entry.resolved if entry is not None else None
        else:
            resolved = engine.router.resolved(destination.domain, destination.answer)
        if resolved is not None and resolved.key == destination.key:
            destination.apply(resolved.policy)
        destination.refresh()
