"""aiosmtplib alone: what a bare Python SMTP client spends per message, the floor beside
which the MTA's whole pipeline (consume, route, shape, SMTP, result, ack) is measured.

    .venv/bin/python benchmarks/client_alone.py --to 127.0.2.1:2525 --messages 20000 --size 1024

`--connections` reused connections (default 10) on uvloop, as the MTA runs, each sending
its share with `sendmail` (MAIL, RCPT, DATA: no pipelining, aiosmtplib has none) to one
sink; the messages are the e2e benchmark's, in wire form, built before the clock starts.
Prints one JSON line: msg/s and the process's CPU per message (user + system) while sending.
`benchmarks/e2e.py` runs it against one of its sinks in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import aiosmtplib
import orjson

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.e2e import mime  # noqa: E402


async def send_all(host: str, port: int, messages: list[tuple[str, bytes]], connections: int) -> None:
    todo = iter(messages)

    async def one_connection() -> None:
        smtp = aiosmtplib.SMTP(hostname=host, port=port, use_tls=False, start_tls=False,
                               local_hostname="bench.mta.test", timeout=60)
        await smtp.connect()
        for recipient, data in todo:
            await smtp.sendmail("bounces@sender.test", [recipient], data)
        await smtp.quit()

    await asyncio.gather(*(one_connection() for _ in range(connections)))


def run(target: str, n: int, size: int, connections: int) -> dict:
    host, _, port = target.rpartition(":")
    messages = [(f"user{i}@d0.test", mime(i, size).replace("\n", "\r\n").encode()) for i in range(n)]
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    cpu, t = time.process_time(), time.monotonic()
    runner(send_all(host, int(port), messages, connections))
    wall, cpu = time.monotonic() - t, time.process_time() - cpu
    return {"messages": n, "msg_s": n / wall, "cpu_us": cpu / n * 1e6}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--to", required=True, help="HOST:PORT of the sink")
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--connections", type=int, default=10)
    args = ap.parse_args()
    print(orjson.dumps(run(args.to, args.messages, args.size, args.connections)).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
