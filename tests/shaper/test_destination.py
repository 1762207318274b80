"""A destination's decisions on plain times, no event loop: admission (shaping), the next
job and its rate slot, the single lane's share of the rate, feedback from replies, and
dead-destination probing."""

import re
from dataclasses import dataclass, replace

import pytest

from shaper.allowance import MAX_WAIT, HeldLedger
from shaper.destination import HAND, IDLE, PROBE_FIRST, PROBE_MAX, QUEUE, DestinationCore, Hold, Wait
from shaper.limiter import Gcra
from shaper.lanes import SINGLE_RECENT
from shaper.patterns import PatternRule, Patterns
from shaper.state import Mode
from shaper.units import Rate

T0 = 1_000_000.0


@dataclass(frozen=True)
class Limits:
    """The fields of mta.config.Policy that a destination's decisions read."""
    connection_limit: int = 10
    max_message_rate: Rate = Rate.parse("100/s")
    max_connection_rate: Rate = Rate.parse("100/min")
    max_deliveries_per_connection: int = 100
    single_connections: int = 1
    single_rate_share: float = 0.05


@dataclass(eq=False)
class Job:
    name: str
    lane: str = "bulk"
    tags: tuple = ()


@dataclass(frozen=True)
class Reply:
    code: int | None
    text: str
    phase: str = "message"

    @property
    def ok(self) -> bool:
        return self.code is not None and self.code < 400

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class Made:
    """A core and what it handed out: holds (job name, delay), why, and state changes."""

    def __init__(self, now: float = T0, patterns: Patterns | None = None, share=None, **limits) -> None:
        self.held: list[tuple[str, int]] = []
        self.reasons: list[str] = []
        self.moves: list = []
        self.core = DestinationCore(Limits(**limits), now, hold=self.hold, moved=self.moves.append,
                                    merge=lambda base, throttle: replace(base, **throttle),
                                    campaign=lambda job: job.tags[0] if job.tags else "", patterns=patterns,
                                    share=share)

    def hold(self, held) -> None:
        self.held.append((held.job.name, held.delay))
        self.reasons.append(held.reason)

    def busy_bulk(self, count: int) -> None:
        """``count`` workers hold bulk jobs."""
        self.core.lanes.bulk_busy = count


def jobs(lane: str, count: int, campaign: str = "") -> list[Job]:
    return [Job(f"{lane}{n}", lane, (campaign,) if campaign else ()) for n in range(count)]


@pytest.mark.parametrize("rate, busy, queued, lane, decision", [
    ("100/s", 0, 0, "bulk", HAND),  # an idle worker takes it
    ("100/s", 3, 0, "bulk", QUEUE),  # the window's 3 workers all hold bulk: it queues
    ("100/s", 3, 0, "single", HAND),  # single mail is not held to bulk's cap
    ("1/s", 3, 11, "bulk", QUEUE),  # 1/s with 3 connections keeps 12 in memory
    ("1/s", 3, 12, "bulk", Hold(5, "allowance")),  # the 13th is back when the 12 are nearly sent
    ("1/min", 0, 0, "bulk", HAND),  # slow: the first goes now
    ("1/min", 3, 1, "bulk", Hold(30, "rate")),  # the next would wait a minute unacknowledged
])
def test_admission(rate, busy, queued, lane, decision):
    made = Made(max_message_rate=Rate.parse(rate))
    made.busy_bulk(busy)
    for job in jobs("bulk", queued):
        assert made.core.queue(job, T0) is QUEUE
    assert made.core.admit(Job("new", lane), T0) == decision


def test_a_small_campaign_gets_its_own_allowance_next_to_a_big_one():
    made = Made(max_message_rate=Rate.parse("1/s"))
    made.busy_bulk(3)
    for job in jobs("bulk", 12, "big"):
        made.core.queue(job, T0)
    assert made.core.admit(Job("late", tags=("big",)), T0) == Hold(5, "allowance")
    assert made.core.admit(Job("small", tags=("small",)), T0) is QUEUE


@pytest.mark.parametrize("until, paused_for, delay", [
    (600, 0, 600),  # back when the pause ends
    (None, 0, 15),  # open-ended: looked at again soon...
    (None, 1200, 300),  # ...later the longer it has lasted
])
def test_a_paused_destination_holds_everything(until, paused_for, delay):
    made = Made()
    made.core.suspend(T0, None if until is None else T0 + until, "operator")
    now = T0 + paused_for
    assert made.core.admit(Job("new", "single"), now) == Hold(delay, "paused")
    assert made.core.held.ahead(now) == 1


def test_pausing_holds_what_is_queued_and_says_so():
    made = Made()
    for job in jobs("bulk", 2):
        made.core.queue(job, T0)
    made.core.suspend(T0, T0 + 120, "suspend pattern")
    assert made.held == [("bulk0", 120), ("bulk1", 120)] and made.reasons == ["paused", "paused"]
    assert [(m.source, m.target) for m in made.moves] == [(Mode.NORMAL, Mode.PAUSED)]
    assert made.core.lanes.queued == 0


@pytest.mark.parametrize("rate, lanes, waits", [
    ("10/s", "bbbb", [0.0, 0.1, 0.2, 0.3]),  # bulk paced at the rate, burst 1
    ("40/s", "bbbb", [0.0, 0.0, 0.025, 0.05]),  # 50 ms worth back to back: burst 2
    ("20/s", "bss", [0.0, 0.0, 1.0]),  # single mail about: its own 5% share, 1/s...
    ("20/s", "sb", [0.0, 1 / 19]),  # ...and it may take bulk's share when bulk has room
])
def test_the_next_job_waits_for_its_rate_slot(rate, lanes, waits):
    made = Made(max_message_rate=Rate.parse(rate))
    core = made.core
    got = []
    for n, lane in enumerate(lanes):
        job = Job(str(n), "single" if lane == "s" else "bulk")
        core.admit(job, T0)
        core.handed(job)
        step = core.next_job(T0, job)
        assert (step.job if isinstance(step, Wait) else step) is job
        got.append(step.until - T0 if isinstance(step, Wait) else 0.0)
    assert got == pytest.approx(waits)


@pytest.mark.parametrize("rate, queued, steps", [
    ("10/s", 0, [IDLE]),  # nothing for a worker
    ("10/s", 3, ["bulk0", ("bulk1", 0.1), ("bulk2", 0.2), IDLE]),  # each later slot booked for the next job
    ("40/s", 3, ["bulk0", "bulk1", ("bulk2", 0.025)]),  # a burst of two goes at once
])
def test_the_next_job_is_one_value(rate, queued, steps):
    made = Made(max_message_rate=Rate.parse(rate))
    core = made.core
    for job in jobs("bulk", queued):
        core.queue(job, T0)
    got = []
    for _ in steps:
        step = core.next_job(T0)
        got.append(step if step is IDLE else (step.job.name, step.until - T0) if isinstance(step, Wait) else step.name)
    assert got == [s if not isinstance(s, tuple) else (s[0], pytest.approx(s[1])) for s in steps]
    assert core.lanes.unpaced == 0  # every job a worker holds has its slot booked


class Share:
    """A provider's share (mta.destinations.share) as the core reads it."""

    def __init__(self, rate: str) -> None:
        self.rate = Gcra(Rate.parse(rate), burst=1)
        self.per_second = self.rate.rate.per_second
        self.queued, self.in_use, self.limit = 0, 0, 1
        self.held = HeldLedger()


def test_a_job_its_provider_s_rate_cannot_send_within_max_wait_is_held_not_handed_to_a_worker():
    share = Share("1/min")
    made = Made(share=share)
    core = made.core
    for job in jobs("bulk", 2):
        core.queue(job, T0)
    share.queued = 2
    assert core.next_job(T0).name == "bulk0"  # the provider's slot now
    assert core.next_job(T0) is IDLE  # the next is a minute away: bulk1 is held, no worker waits for it
    assert [name for name, _ in made.held] == ["bulk1"] and made.reasons == ["provider"]
    assert made.held[0][1] > MAX_WAIT and share.queued == 0 and core.lanes.bulk_busy == 1


def test_the_single_lane_s_rate_share_ends_single_recent_after_its_last_message():
    made = Made(max_message_rate=Rate.parse("20/s"))
    core = made.core
    core.admit(Job("s", "single"), T0)
    assert core.message_rate.rate.per_second == pytest.approx(19)
    core.admit(Job("b"), T0 + SINGLE_RECENT)
    assert core.message_rate.rate.per_second == pytest.approx(19)
    core.admit(Job("b"), T0 + SINGLE_RECENT + 1)
    assert core.message_rate.rate.per_second == pytest.approx(20)


@pytest.mark.parametrize("single_queued, busy, taken", [
    (0, 0, "bulk"),
    (1, 0, "single"),  # single first
    (0, 3, None),  # bulk at its cap: nothing for this worker
    (1, 3, "single"),
])
def test_take(single_queued, busy, taken):
    made = Made()
    made.core.queue(Job("bulk"), T0)
    for _ in range(single_queued):
        made.core.queue(Job("single", "single"), T0)
    made.busy_bulk(busy)
    step = made.core.next_job(T0)
    assert (None if step is IDLE else step.name) == taken


def test_a_job_is_pipelined_behind_another_only_with_its_slot_due_now():
    made = Made(max_message_rate=Rate.parse("10/s"))
    core = made.core
    first, second, third = jobs("bulk", 3)
    for job in (first, second, third):
        core.queue(job, T0)
    assert core.next_job(T0) is first
    assert core.follow(first, 0, T0) is None  # the next slot is 0.1 s away
    assert core.lanes.queued == 3 - 1 and core.lanes.bulk_busy == 1  # back at the front
    assert core.follow(first, 0, T0 + 0.15) is second
    assert core.follow(second, 99, T0 + 0.3) is None  # the session's max_deliveries_per_connection


@pytest.mark.parametrize("deaths, probes", [
    (1, [PROBE_FIRST]),
    (6, [30, 60, 120, 240, 300, 300]),  # doubling up to PROBE_MAX
])
def test_a_dead_destination_rests_longer_each_time_until_a_connection_succeeds(deaths, probes):
    made = Made()
    core = made.core
    now = T0
    got = []
    for _ in range(deaths):
        probe = core.dead(now, "no host accepted a connection")
        got.append(probe)
        assert core.state.mode is Mode.PAUSED and core.state.until == now + probe
        assert core.window.allowed == 1  # one connection probes it
        now += probe
        core.refresh(now)
        assert core.state.mode is Mode.NORMAL
    assert got == probes and max(got) <= PROBE_MAX
    assert core.unreachable_since == T0
    core.reachable()
    assert core.unreachable_since is None and core.dead(now, "again") == PROBE_FIRST


def test_mail_queued_at_a_dead_destination_is_held_until_the_probe():
    made = Made()
    for job in jobs("bulk", 2):
        made.core.queue(job, T0)
    made.core.dead(T0, "no host accepted a connection")
    assert made.held == [("bulk0", 30), ("bulk1", 30)]


@pytest.mark.parametrize("reply, verdict, slower, mode", [
    (Reply(550, "5.1.1 no such user"), None, False, Mode.NORMAL),
    (Reply(421, "4.7.0 Too many connections"), None, False, Mode.NORMAL),
    (Reply(421, "4.7.28 rate limited, try again later"), None, True, Mode.NORMAL),
    (Reply(451, "greylisted"), False, False, Mode.NORMAL),  # a retry pattern
    (Reply(554, "TSS04 suspended"), None, False, Mode.PAUSED),  # a suspend pattern: the operator's reaction
])
def test_what_a_refusal_teaches(reply, verdict, slower, mode):
    patterns = Patterns([PatternRule(0, "suspend", re.compile("TSS04"), duration=3600),
                         PatternRule(1, "retry", re.compile("greylist"))])
    made = Made(patterns=patterns, max_message_rate=Rate.parse("50/s"))
    assert made.core.refused(reply, T0) == (verdict, slower)
    assert made.core.state.mode is mode
    assert (made.core.per_second < 50) is slower


def test_too_many_connections_keeps_one_fewer_than_were_open():
    made = Made()
    window = made.core.window
    for _ in range(3):
        window.try_open()
    made.core.refused(Reply(421, "4.7.0 Too many connections"), T0)
    assert window.allowed == 2


def test_a_throttle_pattern_puts_its_limits_in_force_until_it_ends():
    patterns = Patterns([PatternRule(0, "throttle", re.compile("slow down"), duration=600,
                                     payload={"max_message_rate": Rate.parse("1/s"), "connection_limit": 2})])
    made = Made(patterns=patterns)
    made.core.refused(Reply(421, "4.7.0 slow down"), T0)
    assert (made.core.state.mode, made.core.per_second, made.core.policy.connection_limit) == (Mode.BACKOFF, 1.0, 2)
    made.core.refresh(T0 + 600)
    assert (made.core.state.mode, made.core.per_second, made.core.policy.connection_limit) == (Mode.NORMAL, 100.0, 10)


@pytest.mark.parametrize("bulk, single, opening, in_use, single_about, wants", [
    (0, 0, 0, 0, False, False),  # nothing to carry
    (2, 0, 2, 0, False, False),  # the two opening take them
    (2, 0, 1, 0, False, True),
    (2, 0, 0, 3, False, False),  # the window's 3 are in use
    (2, 0, 0, 2, True, False),  # bulk beside the single lane's reserve: 2 of 3
    (2, 1, 0, 2, True, True),  # single mail may take the reserve
])
def test_another_worker_is_wanted(bulk, single, opening, in_use, single_about, wants):
    made = Made()
    core = made.core
    if single_about:
        core.lanes.single_about(T0, True)
    for job in jobs("bulk", bulk) + jobs("single", single):
        core.queue(job, T0)
    for _ in range(in_use):
        core.window.try_open()
    assert core.wants_connection(opening) is wants


def test_no_worker_while_paused_nor_a_connection_max_connection_rate_allows_only_later():
    made = Made(max_connection_rate=Rate.parse("1/min"), connection_limit=1)
    core = made.core
    core.queue(Job("b"), T0)
    assert core.connection_soon(T0) and core.connection_wait(T0) is None  # the burst's one
    assert not core.connection_soon(T0)  # the next in a minute: the open session carries the mail
    assert core.connection_wait(T0 + 1) == pytest.approx(59)
    core.suspend(T0, T0 + 60, "operator")
    core.queue(Job("c"), T0)  # queued while paused (a reply in flight paused it)
    assert core.lanes.queued == 1 and not core.wants_connection(0)
