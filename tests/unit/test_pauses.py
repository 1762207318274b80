from mta.control import Pauses


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
