"""The typed objects a rules file becomes: frozen structs, one per section, and the
destination `Policy` with the rules' defaults (`DEFAULT_POLICY`). What a value may be is
checked in `checks`; reading and assembling the file is `parse`."""

from __future__ import annotations

import msgspec

from shaper.retry import DEFAULT_INTERVALS, DEFAULT_MAX_AGE
from shaper.units import Rate


class ConfigError(Exception):
    """A rules file that cannot be used; `problems` lists every fault with its key path."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class Broker(msgspec.Struct, frozen=True):
    url: str = "amqp://guest:guest@localhost:5672/"
    queue_type: str = "quorum"
    # Deliveries held unacknowledged per lane: enough to keep every destination busy,
    # small enough that a crash redelivers (and may duplicate) only this many.
    prefetch: int = 1000
    single_prefetch: int = 100
    # Octets of unsettled deliveries a lane takes into memory (0: no bound but the counts):
    # 1,000 messages of 20 MB would otherwise be 20 GB. 64 MiB keeps 1,000 of 64 KB in
    # flight, more than a busy lane of small mail ever needs.
    prefetch_bytes: int = 64 * 1024 * 1024
    # A message redelivered this many times (it crashed the process each time) is quarantined.
    delivery_limit: int = 10
    publish_timeout: float = 30.0
    # Final outcomes on disk (mta.settle.journal), so a crash does not send a delivered message
    # again: "auto" is the rules file's path + ".outcomes" when that can be written,
    # "" none, anything else a file (relative: to the rules file's directory).
    journal: str = "auto"


class Dns(msgspec.Struct, frozen=True):
    nameservers: tuple[str, ...] | None = None
    port: int = 53
    timeout: float = 5.0
    min_ttl: float = 30.0
    max_ttl: float = 3600.0
    # The nameservers validate DNSSEC and the way to them is trusted (a validating resolver
    # on this host): their AD bit is believed, and DANE (RFC 7672) applies. Else never.
    dnssec: bool = False


class Smtp(msgspec.Struct, frozen=True):
    port: int = 25
    helo: str | None = None
    bind: str | None = None
    max_message_size: int = 50 * 1024 * 1024
    ca_file: str | None = None  # CA bundle for `tls: verified`; None: the system's
    # Outbound connections of all destinations together; None: what the file-descriptor
    # limit allows (mta.destinations.budget). More than the limit allows is clamped at start, with a warning.
    max_connections: int | None = None
    # One delivery attempt (connecting through the MX hosts, then the transaction) ends by
    # this deadline: far below RabbitMQ's consumer_timeout (30 min by default), which
    # would otherwise close the channel and redeliver the message while it is still being sent.
    delivery_deadline: float = 300.0
    # Per attempt, at most this many MX hosts and this many addresses of each are tried
    # (Postfix's smtp_mx_address_limit and smtp_mx_session_limit): a domain with twenty
    # dead MX hosts costs one bounded attempt, not twenty connect timeouts.
    max_mx_hosts: int = 5
    max_addresses_per_mx: int = 2
    # Seconds transactions on the wire get to finish after SIGTERM; then they are cut off.
    shutdown_grace: float = 60.0


class MtaSts(msgspec.Struct, frozen=True):
    """Fetching recipient domains' MTA-STS policies (RFC 8461, mta.tls)."""

    ca_file: str | None = None  # CA bundle for the policy servers' certificates; None: the system's
    port: int = 443  # the policy servers' HTTPS port: another only for tests
    timeout: float = 10.0  # seconds one fetch (TXT record, then the policy file) may take
    wait: float = 10.0  # seconds mail waits for the first look at its domain's policy
    reports: bool = True  # TLS-RPT daily report files (RFC 8460) beside the rules file
    report_from: str | None = None  # sender of the reports `mta tls-reports --send` mails; None: not mailed


class Metrics(msgspec.Struct, frozen=True):
    port: int = 9108  # 0 disables the endpoint
    address: str = "127.0.0.1"


class ConsoleUser(msgspec.Struct, frozen=True):
    """A login of the web console: its name and scrypt hash (`mta hash-password`)."""

    username: str
    password_hash: str


class Console(msgspec.Struct, frozen=True):
    """The operator's web console at /console on the metrics port (SPEC §9)."""

    enabled: bool = True
    allow_pause: bool = False  # pause and resume forms; else read-only
    users: tuple[ConsoleUser, ...] = ()  # logins (HTTP Basic); required when metrics.address is not loopback


class Control(msgspec.Struct, frozen=True):
    """Where the key that signs control commands comes from (mta.control); none: unsigned."""

    key_env: str | None = None
    key_file: str | None = None


class Cluster(msgspec.Struct, frozen=True):
    """Several nodes, one set of limits (SPEC §6): the shared store; none: this process alone."""

    store: str | None = None  # redis://HOST:PORT/DB, rediss:// (TLS) or unix://PATH
    node: str | None = None  # this node's name; None: host name and process id


class Suppression(msgspec.Struct, frozen=True):
    """The suppression list (SPEC §8): what adds an address, for how long, in which scope."""

    hard_bounces: bool = True  # a hard bounce (5.1.x from the recipient's server) adds the recipient
    complaints: bool = True  # a feedback-loop complaint adds it
    expire: float = 0.0  # seconds an entry lasts; 0: until removed
    scope: str = "global"  # global | source | sender_domain: where an added entry applies
    store: str | None = None  # postgresql://...: the list shared by nodes on several machines


class Tracking(msgspec.Struct, frozen=True):
    """The event store (SPEC §9): every result, and what the engine saw, kept for lookups."""

    enabled: bool = True
    retention: float = 30 * 86400.0  # seconds events are kept (whole days are dropped)
    stuck_after: float = 3600.0  # seconds without an event before an unfinished message counts as stuck
    store: str | None = None  # postgresql://...: one store for nodes on several machines


class Policy(msgspec.Struct, frozen=True):
    """Limits and policies of one destination; `None` means inherit from the level above."""

    connection_limit: int | None = None
    max_message_rate: Rate | None = None
    max_connection_rate: Rate | None = None
    max_deliveries_per_connection: int | None = None
    idle_timeout: float | None = None
    retry_intervals: tuple[float, ...] | None = None
    max_age: float | None = None
    tls: str | None = None
    connect_timeout: float | None = None
    ehlo_timeout: float | None = None
    starttls_timeout: float | None = None
    mail_from_timeout: float | None = None
    rcpt_to_timeout: float | None = None
    data_timeout: float | None = None
    data_dot_timeout: float | None = None
    single_connections: int | None = None  # connections bulk mail leaves for the single lane
    single_rate_share: float | None = None  # share of max_message_rate kept for the single lane


DEFAULT_POLICY = Policy(
    connection_limit=10,
    max_message_rate=Rate.parse("100/s"),
    max_connection_rate=Rate.parse("100/min"),
    max_deliveries_per_connection=100,
    idle_timeout=60.0,
    retry_intervals=DEFAULT_INTERVALS,
    max_age=DEFAULT_MAX_AGE,
    tls="dane",
    connect_timeout=30.0,
    ehlo_timeout=60.0,
    starttls_timeout=60.0,
    mail_from_timeout=60.0,
    rcpt_to_timeout=60.0,
    data_timeout=60.0,
    data_dot_timeout=120.0,
    single_connections=1,
    single_rate_share=0.05,
)


class Provider(msgspec.Struct, frozen=True):
    name: str
    mx_suffix: tuple[str, ...]
    policy: Policy


class Domain(msgspec.Struct, frozen=True):
    name: str
    policy: Policy
    mx: tuple[str, ...] | None = None


class Pattern(msgspec.Struct, frozen=True):
    match: str | None
    action: str
    code: int | None = None
    enhanced: str | None = None
    duration: float | None = None
    policy: Policy = Policy()


class Route(msgspec.Struct, frozen=True):
    sender_domain: str
    smarthost: str
    policy: Policy
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    tags: tuple[str, ...] = ()
    name: str = ""  # the destination key is `route:NAME`; defaults to sender_domain
    sender_match: str = "envelope"  # match the envelope (MAIL FROM) domain, or the From: header's
    implicit_tls: bool | None = None  # TLS from the first byte; None: only on port 465
    ca_file: str | None = None  # CA bundle for `tls: verified` and the credentials; None: the system's
    tls_verify: bool = True  # credentials only over TLS whose certificate names the smarthost


class DkimKey(msgspec.Struct, frozen=True):
    domain: str
    selector: str
    key_file: str
    algorithm: str = "rsa-sha256"


class Listener(msgspec.Struct, frozen=True):
    """An SMTP submission listener (SPEC §7)."""

    host: str
    port: int
    tls: str = "starttls"  # starttls | implicit | none
    cert_file: str | None = None
    key_file: str | None = None
    # PROXY protocol (v1 or v2) before the SMTP greeting, accepted only from these networks
    # (the load balancers); allowlists then see the client behind them.
    proxy_protocol: bool = False
    proxy_from: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class SourceUser(msgspec.Struct, frozen=True):
    """One login of a source: exactly one of the three ways to its password."""

    username: str
    password_env: str | None = None
    password_file: str | None = None
    password_hash: str | None = None  # scrypt, as `mta hash-password` prints it


class Source(msgspec.Struct, frozen=True):
    """An application that submits mail over SMTP, with what it may do."""

    name: str
    users: tuple[SourceUser, ...] = ()
    auth: str = "password"  # password | none (known by its address alone)
    allow_ips: tuple[str, ...] | None = None  # networks; None: any address (credentials still required)
    sender_domains: tuple[str, ...] | None = None  # envelope sender and From: domains; None: any
    lane: str = "single"
    tags: tuple[str, ...] = ()
    max_message_rate: Rate | None = None
    max_recipients: int = 100
    max_message_size: int | None = None  # None: smtp.max_message_size
    line_endings: str = "reject"  # reject | normalize


class Inbound(msgspec.Struct, frozen=True):
    """A listener for bounces and feedback-loop reports (SPEC §8): mail to `domains` only,
    never relayed."""

    host: str
    port: int
    domains: tuple[str, ...]  # A-labels, lower case; `*.suffix` for any name under it
    max_message_size: int = 10 * 1024 * 1024
    max_connections: int = 200

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class VerpConfig(msgspec.Struct, frozen=True):
    """`envelope_verp:`: every message leaves with an envelope sender naming it and its
    recipient (mta.inbound.verp), at `domain`, where an inbound listener takes its bounces."""

    prefix: str = "bounces"
    domain: str = ""
    separator: str = "+"
    # the key that signs each address (mta.inbound.verp): the same on every node
    key_env: str | None = None
    key_file: str | None = None


class Config(msgspec.Struct, frozen=True):
    broker: Broker = Broker()
    dns: Dns = Dns()
    mta_sts: MtaSts = MtaSts()
    smtp: Smtp = Smtp()
    metrics: Metrics = Metrics()
    console: Console = Console()
    control: Control = Control()
    cluster: Cluster = Cluster()
    suppression: Suppression = Suppression()
    tracking: Tracking = Tracking()
    default: Policy = DEFAULT_POLICY
    providers: tuple[Provider, ...] = ()
    domains: tuple[Domain, ...] = ()
    patterns: tuple[Pattern, ...] = ()
    routes: tuple[Route, ...] = ()
    dkim: tuple[DkimKey, ...] = ()
    listeners: tuple[Listener, ...] = ()
    sources: tuple[Source, ...] = ()
    inbound: tuple[Inbound, ...] = ()
    envelope_verp: VerpConfig | None = None


def merge(base: Policy, override: Policy) -> Policy:
    """`override`'s set fields on top of `base`."""
    changes = {f: v for f in override.__struct_fields__ if (v := getattr(override, f)) is not None}
    return msgspec.structs.replace(base, **changes) if changes else base
