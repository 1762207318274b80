"""The lanes of a destination and the workers idle on its sessions, on plain times: the
single lane's reserve, the bulk cap, the order a worker takes mail in, idle timeouts."""

from dataclasses import dataclass

import pytest

from shaper.lanes import SINGLE_RECENT, IdleWorkers, Lanes

T0 = 1_000_000.0


@dataclass(eq=False)
class Job:
    name: str
    lane: str = "bulk"
    tags: tuple = ()


def campaign(job: Job) -> str:
    return job.tags[0] if job.tags else ""


@pytest.mark.parametrize("allowed, single_connections, single_about, cap", [
    (10, 1, False, 10),  # no single mail about: bulk has the whole window
    (10, 1, True, 9),  # single mail about: one connection kept for it
    (10, 3, True, 7),
    (3, 5, True, 1),  # a reserve larger than the window leaves bulk one
    (1, 1, True, 1),  # never below one
    (2, 0, True, 2),  # no reserve configured
])
def test_bulk_cap(allowed, single_connections, single_about, cap):
    lanes = Lanes(campaign)
    if single_about:
        lanes.single_about(T0, True)
    assert lanes.bulk_cap(allowed, single_connections) == cap


@pytest.mark.parametrize("events, changes, reserve_at_end", [
    ([(0, False)], [False], False),  # bulk alone never starts a reserve
    ([(0, True)], [True], True),  # the first single message starts it
    ([(0, True), (5, True)], [True, False], True),  # more single mail keeps it
    ([(0, True), (SINGLE_RECENT, False)], [True, False], True),  # quiet for exactly SINGLE_RECENT: kept
    ([(0, True), (SINGLE_RECENT + 1, False)], [True, True], False),  # quiet longer: dropped
    ([(0, True), (20, True), (45, False)], [True, False, False], True),  # counted from the last one
    ([(0, True), (31, False), (32, True)], [True, True, True], True),  # and it comes back
])
def test_the_single_lane_s_reserve_outlives_its_last_message_by_single_recent(events, changes, reserve_at_end):
    lanes = Lanes(campaign)
    assert [lanes.single_about(T0 + t, single) for t, single in events] == changes
    assert (lanes.single_seen is not None) is reserve_at_end


def test_a_worker_takes_single_mail_first_and_bulk_only_within_its_cap():
    lanes = Lanes(campaign)
    for name in ("b1", "b2", "b3"):
        lanes.bulk.append(Job(name))
    lanes.single.append(Job("s1", "single"))
    taken = [lanes.take(allowed=2, single_connections=1) for _ in range(4)]
    assert [job.name if job else None for job in taken] == ["s1", "b1", "b2", None]
    assert (lanes.bulk_busy, lanes.unpaced, lanes.queued) == (2, 3, 1)
    lanes.release(taken[1])  # b1 sent: room for one more bulk job
    assert lanes.take(allowed=2, single_connections=1).name == "b3"
    lanes.release(taken[0])  # single mail never counted against bulk's cap
    assert lanes.bulk_busy == 2


def test_a_job_put_back_goes_first_again_and_drain_empties_the_lanes():
    lanes = Lanes(campaign)
    lanes.bulk.append(Job("a1", tags=("a",)))
    lanes.bulk.append(Job("b1", tags=("b",)))
    lanes.single.append(Job("s1", "single"))
    single = lanes.take(allowed=5, single_connections=1)
    bulk = lanes.take(allowed=5, single_connections=1)
    lanes.put_back(bulk)
    lanes.put_back(single)
    lanes.release(bulk)
    assert [lanes.take(allowed=5, single_connections=1).name for _ in range(2)] == ["s1", "a1"]
    assert [job.name for job in lanes.drain()] == ["b1"]
    assert lanes.queued == 0


class Waiter:
    def __init__(self, name: str) -> None:
        self.name = name
        self.result = "waiting"

    def done(self) -> bool:
        return self.result != "waiting"


@pytest.mark.parametrize("deadlines, moves", [
    ([60], [True]),  # the first wait sets the timer
    ([60, 70, 80], [True, False, False]),  # later ones leave it where it is
    ([60, 50, 55], [True, True, False]),  # an earlier one (a shorter idle_timeout) moves it
])
def test_the_timer_moves_only_to_an_earlier_deadline(deadlines, moves):
    idle = IdleWorkers()
    assert [idle.add(T0 + d, Waiter(str(d))) for d in deadlines] == moves
    assert idle.due == T0 + min(deadlines)


@pytest.mark.parametrize("deadlines, now, expired, due", [
    ([60, 70, 80], 59.9, [], 60),  # too early: nobody, the timer is set again for the first
    ([60, 70, 80], 60, ["60"], 70),  # a deadline that has come expires
    ([60, 70, 80], 75, ["60", "70"], 80),
    ([60, 70, 80], 80, ["60", "70", "80"], None),  # nobody left: no timer
    ([80, 60], 60, ["60"], 80),  # in any order
])
def test_idle_workers_whose_idle_timeout_ran_out_are_let_go(deadlines, now, expired, due):
    idle = IdleWorkers()
    for d in deadlines:
        idle.add(T0 + d, Waiter(str(d)))
    assert [waiter.name for waiter in idle.expire(T0 + now)] == expired
    assert idle.due == (None if due is None else T0 + due)
    assert idle.waiting() == len(deadlines) - len(expired)


def test_mail_goes_to_the_oldest_worker_still_waiting():
    idle = IdleWorkers()
    first, second, third = Waiter("1"), Waiter("2"), Waiter("3")
    for n, waiter in enumerate((first, second, third)):
        idle.add(T0 + 60 + n, waiter)
    first.result = None  # closed meanwhile (the budget took its slot)
    assert idle.pop_waiting() is second
    second.result = "job"
    assert idle.expire(T0 + 100) == [third]  # those done are not let go twice
    assert idle.pop_waiting() is None and not idle


def test_shutdown_lets_every_waiting_worker_go():
    idle = IdleWorkers()
    waiters = [Waiter(str(n)) for n in range(3)]
    for n, waiter in enumerate(waiters):
        idle.add(T0 + n, waiter)
    waiters[1].result = "job"
    assert idle.clear() == [waiters[0], waiters[2]]
    assert idle.waiting() == 0
