"""FairQueue: campaigns take turns, order inside a campaign is kept."""

import pytest
from hypothesis import given, strategies as st

from shaper.fair import FairQueue


def campaign(item):
    return item[0]


def test_a_small_campaign_is_not_starved_by_a_big_one():
    q = FairQueue(campaign)
    for i in range(1000):
        q.append(("big", i))
    for i in range(3):
        q.append(("small", i))
    served = [q.popleft() for _ in range(6)]
    assert served == [("big", 0), ("small", 0), ("big", 1), ("small", 1), ("big", 2), ("small", 2)]
    assert len(q) == 997 and q.campaigns == 1


def test_appendleft_goes_first_again():
    q = FairQueue(campaign)
    q.append(("a", 1))
    q.append(("b", 1))
    taken = q.popleft()
    q.appendleft(taken)
    assert q.popleft() == ("a", 1)
    q.appendleft(("b", 0))
    assert [q.popleft(), q.popleft()] == [("b", 0), ("b", 1)]
    assert not q
    with pytest.raises(IndexError):
        q.popleft()


@given(st.lists(st.tuples(st.sampled_from("abcde"), st.integers()), max_size=200))
def test_everything_comes_out_once_in_campaign_order(items):
    q = FairQueue(campaign)
    for item in items:
        q.append(item)
    assert sorted(q, key=repr) == sorted(items, key=repr)
    out = [q.popleft() for _ in range(len(items))]
    assert sorted(out, key=repr) == sorted(items, key=repr)
    for c in "abcde":
        assert [i for i in out if i[0] == c] == [i for i in items if i[0] == c]


@given(st.lists(st.sampled_from("abc"), min_size=1, max_size=100))
def test_while_two_campaigns_have_mail_neither_is_served_twice_in_a_row(keys):
    q = FairQueue(campaign)
    for n, k in enumerate(keys):
        q.append((k, n))
    out = [q.popleft() for _ in range(len(keys))]
    for i in range(1, len(out)):
        left_before = {k for k, _ in out[i - 1:]}
        if len(left_before) > 1:
            assert out[i][0] != out[i - 1][0] or {k for k, _ in out[i:]} == {out[i][0]}


def test_pop_sheds_from_the_tail_of_the_biggest_campaign():
    q = FairQueue(campaign)
    for i in range(5):
        q.append(("big", i))
    q.append(("small", 0))
    assert q.pop() == ("big", 4)
    assert len(q) == 5
    q.pop(), q.pop(), q.pop(), q.pop()
    assert q.pop() == ("small", 0) and not q and q.campaigns == 0
