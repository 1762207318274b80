"""The `mta` command: run the engine, check a rules file, replay quarantined mail."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from mta.config import ConfigError, load_config

DESCRIPTION = """\
A mail transfer agent on RabbitMQ: producers publish JSON messages to the `mta` exchange
(lanes `single` and `bulk`); the MTA delivers them over SMTP with per-destination shaping
and publishes one result per outcome to `mta.results`.

commands:
  run CONFIG             consume both lanes and deliver until SIGTERM/SIGINT (exit 0)
         [--processes N]  ... in N processes sharing limits through cluster.store
  check CONFIG           validate a rules file; lists every problem with its key path, exit 1
         [--explain DOMAIN [--mx HOST]]
                         ... and show which destination and limits apply to DOMAIN, and why
  replay-quarantined CONFIG [--limit N]
                         move messages quarantined after repeated crashes back to their lane
                         (`replay-parked`: its former name, still understood)
  status [--json]        lanes, then every MTA on the broker: each active destination's mode
                         and why, limits in force, in-flight, held, last error (broker as below)
  status DESTINATION     one destination (a domain or key) in every MTA: why its mail waits,
                         until when, limits in force, its last 10 replies that were not 2xx
  pause TARGET [--for D] hold mail for a domain (or destination key such as provider:google)
                         in every MTA on the broker; --for 30m ends the pause by itself
  resume TARGET          lift a pause (or a throttle); held mail comes back within seconds
  reload                 every MTA on the broker re-reads its rules file (as on SIGHUP)
  dkim-keygen DOMAIN SELECTOR
                         write a new DKIM private key file and print the DNS TXT record
  suppress add|remove|check|list|import|export [ADDRESS|CSV] -c CONFIG [--scope S]
                         the suppression list beside CONFIG; removals are audited (--why)
  trace ID|RECIPIENT|--tag T -c CONFIG [--since D]
                         a message's history from the event store beside CONFIG: accepted,
                         every attempt (MX, IP, reply), held and why, final outcome
  stuck -c CONFIG [--older D]
                         messages accepted and silent for longer than D (tracking.stuck_after)
  tls-reports -c CONFIG [--day D] [--send]  a day's TLS-RPT reports (RFC 8460); --send mails them
  hash-password          read a password (from the terminal, or one line on stdin) and print
                         its scrypt hash for a source's `password_hash`

status, pause, resume and reload find the broker in --config CONFIG, else $MTA_BROKER_URL,
else amqp://guest:guest@localhost:5672/; they sign with the control key of CONFIG
(control.key_env or control.key_file). pause, resume and reload say how many MTAs
acknowledged them and exit 1 unless every MTA consuming the lanes did.
"""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return _COMMANDS[args.command](args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mta", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the delivery engine")
    run.add_argument("config", help="path of the YAML rules file")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.add_argument("--processes", type=int, default=1, metavar="N",
                     help="N delivery processes sharing their limits through cluster.store (one per core)")
    run.add_argument("--process-index", type=int, default=None, help=argparse.SUPPRESS)
    run.add_argument("--siblings", type=int, default=1, help=argparse.SUPPRESS)  # nodes started with it
    check = sub.add_parser("check", help="validate a rules file and exit")
    check.add_argument("config")
    check.add_argument("--explain", metavar="DOMAIN", help="show which destination and limits apply to DOMAIN and why")
    check.add_argument("--mx", metavar="HOST", help="with --explain: take this MX host instead of looking it up")
    replay = sub.add_parser("replay-quarantined", aliases=["replay-parked"],
                            help="return quarantined messages to their lanes")
    replay.add_argument("config")
    replay.add_argument("--limit", type=int, default=0, help="move at most this many (0: all)")
    status_cmd = sub.add_parser("status", help="what every MTA on the broker is doing")
    status_cmd.add_argument("destination", nargs="?", help="one destination in detail: a domain or a key "
                            "(mx:HOST, provider:NAME): why mail waits, until when, its last 10 replies that were not 2xx")
    status_cmd.add_argument("-c", "--config", help="rules file naming the broker")
    status_cmd.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    status_cmd.add_argument("--wait", type=float, default=3.0, help="seconds to wait for answers (3)")
    for name, text in (("pause", "hold mail for a domain or destination"), ("resume", "lift a pause")):
        control_cmd = sub.add_parser(name, help=text)
        control_cmd.add_argument("target", help="recipient domain, or a destination key (provider:NAME)")
        control_cmd.add_argument("-c", "--config", help="rules file naming the broker")
        if name == "pause":
            control_cmd.add_argument("--for", dest="duration", help="end the pause after this long (e.g. 30m; "
                                     "at most 30d)")
    reload = sub.add_parser("reload", help="make every MTA on the broker re-read its rules file")
    reload.add_argument("-c", "--config", help="rules file naming the broker")
    for control_cmd in (sub.choices["pause"], sub.choices["resume"], reload):
        control_cmd.add_argument("--wait", type=float, default=3.0,
                                 help="seconds to wait for the MTAs' acknowledgements (3)")
    keygen = sub.add_parser("dkim-keygen", help="write a DKIM key file and print its DNS TXT record")
    keygen.add_argument("domain", help="signing domain (d=), the domain of the From header")
    keygen.add_argument("selector", help="selector (s=): the key is published at SELECTOR._domainkey.DOMAIN")
    keygen.add_argument("--algorithm", default="rsa-sha256", choices=["rsa-sha256", "ed25519-sha256"])
    keygen.add_argument("--bits", type=int, default=2048, help="RSA key size (2048 at least)")
    keygen.add_argument("--key-file", help="where to write the key (default DOMAIN.SELECTOR.pem); never overwritten")
    _package_parsers(sub)
    sub.add_parser("hash-password", help="print the scrypt hash of a password for sources.*.users[].password_hash")
    return parser


def _hash_password(args) -> int:
    """The password never comes from the command line (ps and shell history would show it)."""
    import getpass

    from mta.submission.passwords import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("the two passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("an empty password is refused", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def _package_parsers(sub) -> None:
    """The commands whose parsers and code live in their own packages."""
    from mta.suppression import commands as suppress
    from mta.tls import commands as tls_reports
    from mta.tracking import commands as tracking
    suppress.add_parser(sub)
    tracking.add_parsers(sub)
    tls_reports.add_parser(sub)


def _package_command(args) -> int:
    """suppress (mta.suppression.commands), tls-reports (mta.tls.commands)."""
    import importlib

    package = "mta.suppression" if args.command == "suppress" else "mta.tls"
    return importlib.import_module(f"{package}.commands").run(args)


def _tracking(args) -> int:
    from mta.tracking import commands

    return getattr(commands, args.command)(args)  # trace, stuck


def _keygen(args) -> int:
    from mta.dkim.keygen import keygen as run_keygen

    return run_keygen(args.domain, args.selector, args.algorithm, args.bits, args.key_file)


def _load(path: str):
    """The rules file, or None after printing every problem in it."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{path}: {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def _preflight(config, path: str) -> bool:
    """What `check` and `run` look at beyond the rules: the DKIM keys load (False: they do
    not, the problems printed), the secret files' warnings."""
    if config.dkim:
        from mta.dkim.signer import load_keys

        try:
            _, warnings = load_keys(config.dkim)
        except ConfigError as exc:
            print(f"{path}: {len(exc.problems)} problem(s):", *exc.problems, sep="\n  ", file=sys.stderr)
            return False
        for warning in warnings:
            print(f"{path}: warning: {warning}", file=sys.stderr)
    if config.listeners:
        from mta.submission.service import tls_context

        try:
            for listener in config.listeners:
                tls_context(listener)
        except ConfigError as exc:
            print(f"{path}: {len(exc.problems)} problem(s):", *exc.problems, sep="\n  ", file=sys.stderr)
            return False
    if config.envelope_verp is not None:
        from mta.inbound.verp import load_verp

        try:
            if load_verp(config.envelope_verp).key is None:
                print(f"{path}: warning: envelope_verp has no key (key_env or key_file): anyone who knows a "
                      "message's id can write a bounce that puts any address on the suppression list",
                      file=sys.stderr)
        except ConfigError as exc:
            print(f"{path}: {len(exc.problems)} problem(s):", *exc.problems, sep="\n  ", file=sys.stderr)
            return False
    from mta.console.auth import warning as console_warning
    from mta.ops.control import secret_file_warnings

    for warning in filter(None, [*secret_file_warnings(config), console_warning(config)]):
        print(f"{path}: warning: {warning}", file=sys.stderr)
    return True


def _check(args) -> int:
    config = _load(args.config)
    if config is None or not _preflight(config, args.config):
        return 1
    if args.explain:
        from mta.ops.explain import explain

        print(explain(config, args.explain, args.mx))
        return 0
    from mta.config import retry_notes

    for note in retry_notes(config):
        print(f"{args.config}: note: {note}", file=sys.stderr)
    print(f"{args.config}: OK ({len(config.domains)} domain rules, {len(config.providers)} providers, "
          f"{len(config.patterns)} patterns, {len(config.routes)} routes, {len(config.dkim)} DKIM keys, "
          f"{len(config.listeners)} listeners, {len(config.sources)} sources, {len(config.inbound)} inbound listeners"
          f"{', envelope VERP at ' + config.envelope_verp.domain if config.envelope_verp else ''})")
    return 0


def _replay(args) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    from mta.broker.quarantine import replay_quarantined

    moved = asyncio.run(replay_quarantined(config, args.limit))
    print(f"moved {moved} message(s) from mta.quarantine back to their lanes")
    return 0


def _start(args) -> int:
    config = _load(args.config)
    if config is None or not _preflight(config, args.config):
        return 1
    from mta import processes

    problem = processes.refusal(config, args.processes)
    if problem is not None:
        print(f"cannot start: {problem}", file=sys.stderr)
        return 1
    index = args.process_index
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s " + ("" if index is None else f"[{index}] ") +
                        "%(name)s: %(message)s")
    if args.processes > 1:
        return asyncio.run(processes.supervise(args.config, args.processes, args.log_level))
    if index is not None:
        config = processes.for_child(config, index, args.config)
    return _run(config, args.config, args.siblings)


def _run(config, path: str, siblings: int = 1) -> int:
    from mta.engine import Engine

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio still works
        uvloop = None

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        engine = Engine(config, config_path=path, nodes_at_least=siblings)
        loop.add_signal_handler(signal.SIGHUP, engine.reload)
        from mta.tracking import attach, tracked

        tracker = attach(engine, config, path)  # SPEC §9
        tasks = [tracked(engine.run(stop), tracker)]
        if config.listeners or config.inbound:
            from mta.submission.service import Listeners

            store = engine.cluster.store if engine.cluster is not None else None
            engine.listeners = Listeners(config, clock=engine.time, config_path=path, store=store,  # SPEC §7, §8
                                         suppression=engine.suppression)
            engine.listeners.receiver.track = tracker.result if tracker is not None else None
            await engine.listeners.start()
            tasks.append(engine.listeners.stop_on(stop))
        await asyncio.gather(*tasks)

    try:
        if uvloop is not None:
            uvloop.run(serve())
        else:
            asyncio.run(serve())
    except ConfigError as exc:  # e.g. a route's password variable or file is missing
        print(f"cannot start: {len(exc.problems)} problem(s):", *exc.problems, sep="\n  ", file=sys.stderr)
        return 1
    return 0


def _control(args) -> int:
    from mta.broker.client import redact
    from mta.broker.errors import BrokerError
    from mta.ops import control
    from shaper.units import Duration

    broker = _broker(args)
    if broker is None:
        return 1
    url, key = broker
    seconds = None
    if getattr(args, "duration", None):
        try:
            seconds = Duration.parse(args.duration).seconds
        except ValueError as exc:
            print(f"--for: {exc}", file=sys.stderr)
            return 2
        if seconds > control.MAX_PAUSE:
            print(f"--for: {args.duration} is longer than {control.MAX_PAUSE / 86400:.0f} days, the longest pause "
                  "an MTA accepts", file=sys.stderr)
            return 2
    target = getattr(args, "target", "")
    what = f"{args.command} {target}".rstrip() + (f" for {args.duration}" if seconds else "")
    try:
        acks, expected = asyncio.run(control.send(url, args.command, target, seconds, key=key, wait=args.wait))
    except BrokerError as exc:  # unreachable, or lost midway
        print(f"mta {args.command}: cannot reach the broker at {redact(url)}: {exc}", file=sys.stderr)
        return 1
    return _report_acks(what, acks, expected, args.wait, signed=key is not None)


def _report_acks(what: str, acks: list[dict], expected: int, wait: float, *, signed: bool) -> int:
    """Say how many MTAs did it; exit 1 unless every MTA consuming the lanes did."""
    if not acks:
        hint = "" if signed else (" or they require signed commands (give --config with the rules file "
                                  "holding control.key_env or control.key_file)")
        print(f"{what}: no MTA acknowledged it within {wait:g} s: none is running on this broker{hint}",
              file=sys.stderr)
        return 1
    done = [a for a in acks if a.get("ok")]
    refused = [a for a in acks if not a.get("ok")]
    print(f"{what}: acknowledged by {len(done)} MTA(s)" + (f" of {expected}" if expected else ""))
    for ack in refused:
        print(f"  {ack.get('instance')}: refused: {ack.get('error')}", file=sys.stderr)
    if len(acks) < expected:
        print(f"  {expected - len(acks)} MTA(s) consuming the lanes did not answer within {wait:g} s",
              file=sys.stderr)
    return 0 if not refused and len(acks) >= expected else 1


def _broker(args) -> tuple[str, bytes | None] | None:
    """(broker URL, control key) from --config, else $MTA_BROKER_URL and no key; None: a
    problem was printed."""
    import os

    from mta.ops import control

    if not args.config:
        return os.environ.get("MTA_BROKER_URL", "amqp://guest:guest@localhost:5672/"), None
    try:
        config = load_config(args.config)
        return config.broker.url, control.load_key(config.control)
    except ConfigError as exc:
        print(f"{args.config}: {len(exc.problems)} problem(s):", *exc.problems, sep="\n  ", file=sys.stderr)
        return None


def _status(args) -> int:
    import orjson

    from mta.broker.errors import BrokerError
    from mta.ops import status

    broker = _broker(args)
    if broker is None:
        return 1
    url, key = broker
    try:
        report = asyncio.run(status.collect(url, args.wait, key, args.destination))
    except BrokerError as exc:  # unreachable (the message says where), or lost midway
        print(f"mta status: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    elif args.destination:
        print(status.render_detail(report, args.destination))
    else:
        print(status.render(report))
    return 0


# One function per command (`replay-parked`: the former name of `replay-quarantined`).
_COMMANDS = {
    "run": _start, "check": _check, "replay-quarantined": _replay, "replay-parked": _replay,
    "status": _status, "pause": _control, "resume": _control, "reload": _control, "dkim-keygen": _keygen,
    "hash-password": _hash_password, "suppress": _package_command, "trace": _tracking, "stuck": _tracking,
    "tls-reports": _package_command,
}
