"""A message's reply to its end of data is its outcome, whatever happens after it on the
session (mta.destinations.delivery with the real SMTP session, against a local receiver over TCP): with
the next transaction's MAIL, RCPT and DATA pipelined behind the content (RFC 2920), their
replies are read under the next message's deadline, and a deadline or a shutdown that cuts
them short is the next message's fate, never a redelivery of one the receiver accepted."""

from __future__ import annotations

import asyncio
import time

from mta.clock import SYSTEM
from mta.config import Policy, Smtp, merge
from mta.destinations.delivery import Destination
from mta.routing.mx import MxAnswer, MxHost
from mta.smtp.client import Reply
from mta.smtp.connector import Connector
from tests.mta.test_attempt_limits import FAST, Book, job, until


class Receiver:
    """A receiver offering PIPELINING that accepts every message and answers the second
    RCPT TO of the session only when ``answer_rcpt`` is set (a tarpit)."""

    def __init__(self) -> None:
        self.contents: list[bytes] = []
        self.tarpitted = asyncio.Event()  # the second RCPT TO came and is not answered
        self.answer_rcpt = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.sessions: set[asyncio.Task] = set()
        self.on_tarpit = None  # called in the turn the reply to the first dot is written out

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions.add(asyncio.current_task())
        writer.write(b"220 receiver.test ESMTP\r\n")
        rcpts, content = 0, None
        try:
            while line := await reader.readline():
                if content is not None:
                    if line == b".\r\n":
                        self.contents.append(content)
                        content = None
                        writer.write(b"250 2.0.0 queued\r\n")
                    else:
                        content += line
                    continue
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(b"250-receiver.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                elif verb == b"RCPT":
                    rcpts += 1
                    if rcpts == 2:
                        await writer.drain()  # what came before (the 250 to the first dot) is out
                        self.tarpitted.set()
                        if self.on_tarpit is not None:
                            self.on_tarpit()
                        await self.answer_rcpt.wait()
                    writer.write(b"250 2.1.5 ok\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    content = b""
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        self.answer_rcpt.set()
        self.server.close()
        for session in self.sessions:
            session.cancel()
        await asyncio.gather(*self.sessions, return_exceptions=True)
        await self.server.wait_closed()


async def two_pipelined(receiver: Receiver, deadline: float, book: Book, outcomes: list) -> Destination:
    """m1 and m2 queued for one connection: m2's commands go out behind m1's content."""
    port = await receiver.start()
    answer = MxAnswer((MxHost("mx.receiver.test", 10, ("127.0.0.1",), port),))
    dest = Destination("mx:receiver", answer, merge(FAST, Policy(connection_limit=1, tls="disabled")),
                       connector=Connector("me.test", None), port=port,
                       done=lambda a: outcomes.append((a.job.id, a.reply, time.monotonic())),
                       hold=lambda h: outcomes.append((h.job.id, f"held {h.delay}s", time.monotonic())),
                       clock=SYSTEM, smtp=Smtp(delivery_deadline=deadline))
    dest.push(job(1, book))
    dest.push(job(2, book))
    return dest


def test_a_tarpitted_next_transaction_does_not_take_the_accepted_message_with_it() -> None:
    async def scenario():
        receiver, book, outcomes = Receiver(), Book(), []
        dest = await two_pipelined(receiver, 0.5, book, outcomes)
        await until(receiver.tarpitted.is_set)
        tarpitted = time.monotonic()
        await until(lambda: len(outcomes) == 2, 5)
        dest.close_idle()
        await until(lambda: not dest.tasks)
        await receiver.stop()
        return receiver, outcomes, book, tarpitted

    receiver, outcomes, book, tarpitted = asyncio.run(scenario())
    (first, delivered, _), (second, deferred, at) = outcomes
    assert (first, delivered.code, delivered.text) == ("m1", 250, "2.0.0 queued")  # once, as delivered
    assert second == "m2" and deferred.code is None and deferred.phase == "mail"
    assert deferred.text == "delivery deadline of 500ms reached before the message was sent"
    assert 0.3 < at - tarpitted < 1.0  # m2's own deadline, from the reply to m1's content on
    assert receiver.contents == [b"Subject: 1\r\n\r\nhello\r\n"]
    assert book.requeue == []


def test_a_shutdown_in_the_turn_the_reply_arrives_still_takes_it() -> None:
    """The reply to m1's dot is in the MTA's socket, not yet read by the loop, when the
    shutdown cancels the worker (in the very turn the receiver wrote it): m1 is delivered,
    not reported interrupted (which would send it again)."""
    async def scenario():
        receiver, book, outcomes = Receiver(), Book(), []
        dest = await two_pipelined(receiver, 30.0, book, outcomes)
        receiver.on_tarpit = lambda: [task.cancel() for task in dest.tasks]
        await until(receiver.tarpitted.is_set)
        await asyncio.gather(*dest.tasks, return_exceptions=True)
        await receiver.stop()
        return outcomes, book

    outcomes, book = asyncio.run(scenario())
    assert [(i, r.code, r.text) for i, r, _ in outcomes] == [("m1", 250, "2.0.0 queued")]
    assert book.requeue == [2]


def test_a_shutdown_behind_an_accepted_message_keeps_its_outcome() -> None:
    async def scenario():
        receiver, book, outcomes = Receiver(), Book(), []
        dest = await two_pipelined(receiver, 30.0, book, outcomes)
        await until(receiver.tarpitted.is_set)
        for task in dest.tasks:
            task.cancel()  # the engine's shutdown at the end of its grace period
        cancelled = time.monotonic()
        await asyncio.gather(*dest.tasks, return_exceptions=True)
        stopped = time.monotonic() - cancelled
        await receiver.stop()
        return receiver, outcomes, book, stopped

    receiver, outcomes, book, stopped = asyncio.run(scenario())
    assert [(i, r.code, r.text) for i, r, _ in outcomes] == [("m1", 250, "2.0.0 queued")]
    assert book.requeue == [2]  # m2 never had its content sent: back to the broker, no attempt
    assert receiver.contents == [b"Subject: 1\r\n\r\nhello\r\n"]
    assert stopped < 2.5  # hung up: no QUIT waiting 5 s behind replies that are still due
