"""SMTP submission (SPEC §7): applications hand mail to our own listeners as sources, and
hear 250 only once the broker holds it. Kept light: the engine reads `MAX_CONNECTIONS`
for its descriptor budget without loading the listeners' code."""

MAX_CONNECTIONS = 1000  # client connections per listener and process; beyond it 421


def listening(config) -> int:
    """Client connections this process's listeners may hold at most (submission and inbound),
    each with one descriptor of its own, plus one per listening socket."""
    listeners = config.listeners
    return (MAX_CONNECTIONS + 1) * len(listeners) + sum(i.max_connections + 1 for i in config.inbound)
