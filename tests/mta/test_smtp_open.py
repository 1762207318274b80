"""Opening a session (connect, banner, EHLO, STARTTLS, EHLO) runs under the attempt's one
deadline: a receiver that answers every step just inside that step's timeout cannot stretch
the open to a multiple of the time left. A cut open ends in one deferral naming the phase,
and nothing it held stays open: the receiver sees the connection closed at once, as it does
when the open is cancelled (shutdown).

The receiver is a real one on a loopback socket, scripted to answer each step at 0.9 of the
step's timeout (STARTTLS with a certificate of a throw-away CA)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time

import pytest

from mta.clock import SYSTEM
from mta.config import Policy, Smtp, merge
from mta.destinations.delivery import Destination
from mta.routing.mx import MxAnswer, MxHost
from mta.smtp.client import SessionFailed, Timeouts
from mta.smtp.connector import Connector
from tests.mta.test_attempt_limits import FAST, job

STEP = 0.5  # each step's timeout: connect (with the banner), EHLO, STARTTLS
SLOW = 0.9  # of its timeout, when the tarpit answers each step


@pytest.fixture(scope="module")
def tls_context():
    from tests.testbed.tls import TestCA
    directory = tempfile.mkdtemp(prefix="mta-unit-ca-")
    try:
        yield TestCA(directory).server_context(names=["mx.tarpit.test"], ips=["127.0.0.1"])
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class Tarpit:
    """Answers the banner, EHLO (offering STARTTLS), STARTTLS (then the handshake) and
    EHLO again, each at ``SLOW`` of its step's timeout. Notes every step it answered and
    when the client's side of a connection closed."""

    def __init__(self, context) -> None:
        self.context = context
        self.answered: list[str] = []
        self.hung_up = asyncio.Event()  # the client closed its side
        self.hung_up_at = 0.0  # time.monotonic() then
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> "Tarpit":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, step: str,
                      reply: bytes) -> None:
        until = time.monotonic() + SLOW * STEP
        while time.monotonic() < until:  # slow, but watching for the client to hang up meanwhile
            if reader.at_eof():
                raise ConnectionResetError("the client hung up")
            await asyncio.sleep(0.005)
        writer.write(reply)
        await writer.drain()
        self.answered.append(step)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tls = False
        try:
            await self._answer(reader, writer, "banner", b"220 mx.tarpit.test ESMTP\r\n")
            while line := await reader.readline():
                verb = line.split()[0].upper() if line.split() else b""
                if verb == b"EHLO":
                    offers = b"250-mx.tarpit.test\r\n250-PIPELINING\r\n" + (b"250 8BITMIME\r\n" if tls else
                                                                            b"250 STARTTLS\r\n")
                    await self._answer(reader, writer, "ehlo", offers)
                elif verb == b"STARTTLS":
                    await self._answer(reader, writer, "starttls", b"220 2.0.0 go ahead\r\n")
                    await writer.start_tls(self.context)
                    tls = True
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 bye\r\n")
                    break
                else:
                    writer.write(b"250 2.0.0 ok\r\n" if verb != b"DATA" else b"354 go on\r\n")
        except (OSError, ssl_error()):
            pass
        finally:
            self.hung_up_at = time.monotonic()
            self.hung_up.set()
            writer.close()


def ssl_error():
    import ssl
    return ssl.SSLError


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_an_open_answered_slowly_at_every_step_ends_by_the_attempt_s_deadline(tls_context) -> None:
    # banner 0.45 s, EHLO 0.9 s, STARTTLS 1.35 s, EHLO 1.8 s: each step inside its 0.5 s,
    # the whole open far past the attempt's 1 s.
    async def scenario():
        baseline = open_fds()
        tarpit = await Tarpit(tls_context).start()
        outcomes = []
        policy = merge(FAST, Policy(connect_timeout=STEP, ehlo_timeout=STEP, starttls_timeout=STEP,
                                    tls="opportunistic"))
        dest = Destination("mx:tarpit", MxAnswer((MxHost("mx.tarpit.test", 10, ("127.0.0.1",), tarpit.port),)),
                           policy, connector=Connector("mta.test", None), port=25,
                           done=lambda a: outcomes.append((a.job.id, a.reply)),
                           hold=lambda h: outcomes.append((h.job.id, f"held {h.delay}s")),
                           clock=SYSTEM, smtp=Smtp(delivery_deadline=1.0))
        started = time.monotonic()
        dest.push(job(1))
        while not outcomes and time.monotonic() - started < 5:
            await asyncio.sleep(0.005)
        took = time.monotonic() - started
        await asyncio.wait_for(tarpit.hung_up.wait(), 0.5)  # closed with the outcome, not left to GC
        hung_up_after = tarpit.hung_up_at - started
        await asyncio.wait_for(asyncio.gather(*dest.tasks), 5)
        await tarpit.stop()
        await asyncio.sleep(0.05)  # the transports' own close callbacks
        return outcomes, took, hung_up_after, tarpit.answered, dest.connected, open_fds() - baseline

    outcomes, took, hung_up_after, answered, connected, leaked = asyncio.run(scenario())
    assert 0.95 <= took < 1.0 + 0.25, f"the attempt took {took:.2f}s"
    (i, reply), = outcomes  # one outcome: a deferral (no code), in the phase that was cut
    assert (reply.code, reply.phase) == (None, "tls")
    assert reply.text.startswith("timed out (tls)") and "deadline" in reply.text
    assert answered == ["banner", "ehlo"]  # the STARTTLS reply was never waited for
    assert hung_up_after < 1.0 + 0.25
    assert connected == 0 and leaked == 0


def test_an_open_cancelled_midway_closes_its_connection(tls_context) -> None:
    # Shutdown cancels a worker while it opens a session: the connection does not linger.
    async def scenario():
        baseline = open_fds()
        tarpit = await Tarpit(tls_context).start()
        connector = Connector("mta.test", None)
        opening = asyncio.ensure_future(connector.open("mx.tarpit.test", "127.0.0.1", tarpit.port, tls="opportunistic",
                                                       timeouts=Timeouts(STEP, STEP, STEP, 1, 1, 1, 1)))
        while tarpit.answered != ["banner"]:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.1)  # waiting for the EHLO reply
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        await asyncio.wait_for(tarpit.hung_up.wait(), 0.5)
        await tarpit.stop()
        await asyncio.sleep(0.05)
        return open_fds() - baseline

    assert asyncio.run(scenario()) == 0


def test_a_step_timeout_is_still_its_own_reply(tls_context) -> None:
    # Within the deadline, a step that times out says so as before.
    async def scenario():
        tarpit = await Tarpit(tls_context).start()
        connector = Connector("mta.test", None)
        try:
            with pytest.raises(SessionFailed) as failed:
                await connector.open("mx.tarpit.test", "127.0.0.1", tarpit.port, tls="opportunistic",
                                     timeouts=Timeouts(STEP, SLOW * STEP / 2, STEP, 1, 1, 1, 1, opening=10.0))
            await asyncio.wait_for(tarpit.hung_up.wait(), 0.5)
        finally:
            await tarpit.stop()
        return failed.value.reply

    reply = asyncio.run(scenario())
    assert (reply.code, reply.phase, reply.text) == (None, "ehlo", "timed out (ehlo)")
