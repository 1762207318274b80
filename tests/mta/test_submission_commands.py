"""The listener's command loop below aiosmtpd (mta.submission.commands), without a network:
the idle timer, armed once per connection, still ends a connection exactly its timeout
after the client last spoke."""

import asyncio

from aiosmtpd.smtp import Session

from mta.submission.commands import Commands
from tests.fakes import FakeClock


class _Transport:
    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.closed_at: list[float] = []

    def close(self) -> None:
        self.closed_at.append(self.clock.now())


def _connection(clock: FakeClock, timeout: float) -> tuple[Commands, _Transport]:
    smtp = Commands(object(), hostname="mta.test", timeout=timeout, loop=asyncio.new_event_loop())
    smtp.clock = clock
    smtp.transport = transport = _Transport(clock)
    smtp.session = Session(smtp.loop)
    return smtp, transport


def test_a_silent_client_is_disconnected_its_timeout_after_its_last_command():
    clock = FakeClock()
    start = clock.now()
    smtp, transport = _connection(clock, timeout=300)
    smtp._reset_timeout()  # connected
    for _ in range(3):  # a command every 200 s: never silent for 300
        clock.advance(200)
        smtp._reset_timeout()
    clock.advance(299)
    assert transport.closed_at == []
    clock.advance(2)
    assert transport.closed_at == [start + 600 + 300]
    smtp.loop.close()


def test_a_shorter_timeout_takes_effect_at_once():
    """After a 300 s timeout, a 10 s one (aiosmtpd's PROXY header wait) ends the
    connection 10 s on, not when the earlier timer was due."""
    clock = FakeClock()
    start = clock.now()
    smtp, transport = _connection(clock, timeout=300)
    smtp._reset_timeout()
    clock.advance(5)
    smtp._reset_timeout(10)
    clock.advance(20)
    assert transport.closed_at == [start + 15]
    smtp.loop.close()
