"""The inbound listener's own bounds (SPEC §8), over a real loopback socket: connections
at once, and how many of them one client may hold."""

from __future__ import annotations

import asyncio
from functools import partial

from mta.config import Inbound
from mta.inbound.server import InboundServer, Reports


async def _greeting(port: int):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    line = await asyncio.wait_for(reader.readline(), 5)
    return line, writer


def test_one_client_holds_at_most_half_of_the_connections() -> None:
    # Anyone may connect: one host keeping every connection open (a command every few
    # minutes) would have every bounce from everyone else refused, for days.
    async def run():
        reports = Reports(Inbound(host="127.0.0.1", port=0, domains=("bounces.example",), max_connections=4), None)
        server = await asyncio.get_running_loop().create_server(
            partial(InboundServer, reports, hostname="mx.test", timeout=30), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        first = [await _greeting(port) for _ in range(2)]
        third, writer = await _greeting(port)
        assert [line[:4] for line, _ in first] == [b"220 ", b"220 "]
        assert third.startswith(b"421 4.7.0") and b"your address" in third, third
        assert reports.refused == {"client": 1}
        writer.close()
        first[0][1].close()
        await first[0][1].wait_closed()
        for _ in range(500):  # until the server has seen the close
            if reports.connections == 1:
                break
            await asyncio.sleep(0.01)
        assert reports.connections == 1 and sum(reports.clients.values()) == 1
        again, writer = await _greeting(port)
        assert again.startswith(b"220 "), again
        for _, w in [*first[1:], (None, writer)]:
            w.close()
        server.close()
        await server.wait_closed()

    asyncio.run(run())


class Failing:
    """A receiver that fails in a way nothing foresaw."""

    async def received(self, content, mail_from, rcpt_tos, peer):
        raise RuntimeError("/var/lib/mta/secret.sqlite is locked")


def test_a_receiver_that_fails_answers_451_and_says_nothing_of_why() -> None:
    # aiosmtpd's own answer would be "500 Error: (RuntimeError) <the text>": the sender
    # drops its bounce for good, learns our internals, and the transaction is never reset.
    async def run():
        reports = Reports(Inbound(host="127.0.0.1", port=0, domains=("bounces.example",)), Failing())
        server = await asyncio.get_running_loop().create_server(
            partial(InboundServer, reports, hostname="mx.test", timeout=30), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def say(line: bytes) -> bytes:
            if line:
                writer.write(line + b"\r\n")
            while True:
                reply = await asyncio.wait_for(reader.readline(), 5)
                if reply[3:4] != b"-":
                    return reply

        await say(b"")
        await say(b"EHLO mx.receiver.test")
        for command in (b"MAIL FROM:<>", b"RCPT TO:<fbl@bounces.example>", b"DATA"):
            await say(command)
        reply = await say(b"Subject: x\r\n\r\nx\r\n.")
        assert reply.startswith(b"451 4.3.0") and b"secret" not in reply, reply
        assert (await say(b"MAIL FROM:<>")).startswith(b"250"), "the transaction was reset"
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(run())
