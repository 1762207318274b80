from shaper.pauses import Pauses


def test_pause_until_resumed():
    p = Pauses()
    assert p.apply({"command": "pause", "target": "Example.COM."}, now=0) == "example.com"
    assert p.paused(10**9, "example.com")
    assert p.apply({"command": "resume", "target": "example.com"}, now=1) == "example.com"
    assert not p.paused(2, "example.com") and not p


def test_pause_with_expiry_ends_by_itself():
    p = Pauses()
    p.apply({"command": "pause", "target": "provider:google", "until": 100.0}, now=0)
    assert p.paused(99.9, "gmail.com", "provider:google")
    assert not p.paused(100.0, "gmail.com", "provider:google")
    assert not p


def test_unknown_or_empty_commands_change_nothing():
    p = Pauses()
    assert p.apply({"command": "explode", "target": "x.example"}, now=0) is None
    assert p.apply({"command": "pause"}, now=0) is None
    assert not p


def test_the_10001st_pause_is_refused_and_says_why():
    p = Pauses()
    for i in range(10_000):
        assert p.apply({"command": "pause", "target": f"d{i}.example"}, now=0) == f"d{i}.example"
    assert p.apply({"command": "pause", "target": "one-more.example"}, now=0) is None
    assert not p.paused(1, "one-more.example") and len(p.active(1)) == 10_000
    assert p.refusal({"command": "pause", "target": "one-more.example"}, now=0) == \
        "10000 pauses are in force already; resume some first"
    # a pause already in force may still change its end; a resume makes room
    assert p.apply({"command": "pause", "target": "d7.example", "until": 50.0}, now=0) == "d7.example"
    p.apply({"command": "resume", "target": "d8.example"}, now=0)
    assert p.apply({"command": "pause", "target": "one-more.example"}, now=0) == "one-more.example"
    assert p.apply({"command": "pause", "target": "two-more.example"}, now=0) is None


def test_pauses_that_ended_make_room_for_new_ones():
    p = Pauses()
    for i in range(10_000):
        p.apply({"command": "pause", "target": f"d{i}.example", "until": 100.0}, now=0)
    assert p.apply({"command": "pause", "target": "later.example"}, now=100.0) == "later.example"
    assert list(p.active(100.0)) == ["later.example"]


def test_the_end_of_a_pause_is_at_most_30_days_ahead():
    p = Pauses()
    now = 1_800_000_000.0
    month = 30 * 86400
    assert p.apply({"command": "pause", "target": "a.example", "until": now + month}, now) == "a.example"
    for until in (now + month + 1, 1e300, float("inf"), float("nan"), "soon", True, [1]):
        assert p.apply({"command": "pause", "target": "b.example", "until": until}, now) is None, until
    assert not p.paused(now, "b.example")
    assert p.refusal({"command": "pause", "target": "b.example", "until": now + month + 1}, now) == \
        "it would end 30 days from now, more than 30"
    assert p.refusal({"command": "pause", "target": "b.example", "until": "soon"}, now) == "its end 'soon' is not a time"


def test_a_target_longer_than_a_thousand_characters_is_refused():
    p = Pauses()
    assert p.apply({"command": "pause", "target": "x" * 1001}, now=0) is None
    assert p.apply({"command": "pause", "target": "x" * 1000}, now=0) == "x" * 1000
