"""`mta tls-reports -c CONFIG [--day DAY] [--send]`: the TLS-RPT reports (RFC 8460) the MTA
wrote beside the rules file, listed, or mailed through the MTA itself.

A day's reports are complete once the day is over (UTC), so the command is meant for a
daily timer shortly after midnight, for yesterday (the default). `--send` looks up each
domain's `_smtp._tls` TXT record and publishes one message per `mailto:` address to the
`single` lane (persistent, confirmed), from `mta_sts.report_from`; a report mailed is
marked (`FILE.sent`) and never mailed twice. Domains without a record get nothing. A
broker that cannot be reached, or refuses a publish, ends the command (exit 1) with the
reports not yet mailed left unmarked for the next run.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import sys

from mta.clock import SYSTEM

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    reports = sub.add_parser("tls-reports", help="list or mail the TLS-RPT reports (RFC 8460) of a day")
    reports.add_argument("-c", "--config", required=True, help="rules file (the reports are kept beside it)")
    reports.add_argument("--day", help="YYYY-MM-DD (UTC; default: yesterday)")
    reports.add_argument("--send", action="store_true", help="mail them to the domains' rua addresses")


def run(args: argparse.Namespace) -> int:
    from mta.config import ConfigError, load_config
    from mta.tls.report import day_of

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 1
    day = args.day or day_of(SYSTEM.wall() - 86400)
    files = sorted(f for f in glob.glob(os.path.join(glob.escape(args.config + ".tlsrpt"), f"{day}_*.json")))
    if not args.send:
        for path in files:
            print(f"{path}{'  (mailed)' if os.path.exists(path + '.sent') else ''}")
        return 0
    if not config.mta_sts.report_from:
        print(f"{args.config}: mta_sts.report_from is not set: reports are not mailed", file=sys.stderr)
        return 1
    from mta.broker.errors import BrokerError

    try:
        return asyncio.run(_send(config, [f for f in files if not os.path.exists(f + ".sent")], day))
    except BrokerError as exc:
        print(f"mta tls-reports: {exc}", file=sys.stderr)
        return 1


async def _send(config, files: list[str], day: str) -> int:
    import dns.exception

    from mta.broker import client
    from mta.broker.topology import lane_queue
    from mta.tls.mailing import parse_rua, report_message
    from mta.tls.service import resolver_of

    resolver = resolver_of(config)
    async with client.connected(config.broker.url, "mta tls-reports") as connection:
        channel = client.publishing(await client.channel(connection, confirms=True))
        for path in files:
            with open(path, encoding="utf-8") as fh:
                document = json.load(fh)
            domain = document["policies"][0]["policy"]["policy-domain"]  # (a file name may end in a node's)
            try:
                answer = await resolver.resolve(f"_smtp._tls.{domain}", "TXT", lifetime=config.dns.timeout)
                rua = parse_rua([b"".join(r.strings).decode("utf-8", "replace") for r in answer])
            except dns.exception.DNSException:
                rua = []
            for n, address in enumerate(rua):
                body = {"id": f"tlsrpt-{day}-{domain}-{n}", "recipient": address, "envelope": config.mta_sts.report_from,
                        "mime": report_message(document, domain, config.mta_sts.report_from, address, SYSTEM.wall()),
                        "tags": ["tlsrpt"]}
                await client.publish_json(channel, lane_queue("single"), json.dumps(body).encode(),
                                          config.broker.publish_timeout, persistent=True)
            print(f"{domain}: {', '.join(rua) or 'no _smtp._tls record with a mailto: address, not mailed'}")
            with open(path + ".sent", "w") as fh:
                fh.write(",".join(rua) + "\n")
    return 0
