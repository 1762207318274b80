"""VERP addresses: made and read back, whatever the id and the recipient's local part."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta.inbound.verp import VerpConfig, verp_address, verp_decode

VERP = VerpConfig(prefix="bounces", domain="bounces.example", separator="+")
UUID = "550e8400-e29b-41d4-a716-446655440000"


def test_the_scheme() -> None:
    address = verp_address(VERP, UUID, "jane.doe@Example.ORG")
    assert address == f"bounces+{UUID}=jane.doe=example.org@bounces.example"
    assert verp_decode(VERP, address) == (UUID, "jane.doe@example.org")


def test_equals_signs_in_the_recipient_and_odd_ids_survive() -> None:
    address = verp_address(VERP, "order=7+x_é y", "a=b+tag@example.org")
    assert address == "bounces+order_3D7_2Bx_5F_C3_A9_20y=a=b+tag=example.org@bounces.example"
    assert verp_decode(VERP, address) == ("order=7+x_é y", "a=b+tag@example.org")


def test_case_changes_of_domains_and_escapes_are_forgiven() -> None:
    address = verp_address(VERP, "id=1", "x@example.org")
    assert verp_decode(VERP, f"<{address.replace('bounces.example', 'Bounces.EXAMPLE.')}>") == ("id=1", "x@example.org")
    assert verp_decode(VERP, address.replace("_3D", "_3d")) == ("id=1", "x@example.org")
    shouted = verp_decode(VERP, verp_address(VERP, UUID, "x@example.org").upper())
    assert shouted == (UUID.upper(), "X@example.org")  # a UUID compares without case


@pytest.mark.parametrize("address", [
    "", "nobody", f"bounces+{UUID}=x=example.org@elsewhere.example",  # another domain
    f"other+{UUID}=x=example.org@bounces.example",  # another prefix
    f"bounces+{UUID}@bounces.example",  # no recipient
    f"bounces+{UUID}=x@bounces.example",  # half a recipient
    "bounces+=x=example.org@bounces.example",  # no id
    "bounces+ab_ZZ=x=example.org@bounces.example",  # a broken escape
    "bounces+_FF=x=example.org@bounces.example",  # not UTF-8
    "bounces+a.b=x=example.org@bounces.example",  # a character we never write
])
def test_not_ours(address: str) -> None:
    assert verp_decode(VERP, address) is None


@pytest.mark.parametrize("recipient", ['"john doe"@example.org', "john doe@example.org", "example.org", "@example.org"])
def test_recipients_that_cannot_travel_unquoted(recipient: str) -> None:
    with pytest.raises(ValueError):
        verp_address(VERP, UUID, recipient)


def test_an_empty_id_cannot_be_carried() -> None:
    with pytest.raises(ValueError):
        verp_address(VERP, "", "x@example.org")


LOCAL = st.text(alphabet="abcXYZ019.!#$%&'*+/=?^_`{|}~-é", min_size=1, max_size=30)
DOMAIN = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z]{2,6}){1,2}", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=60), LOCAL, DOMAIN,
       st.sampled_from([VERP, VerpConfig(prefix="b", domain="b.example", separator="-")]))
def test_round_trip(message_id: str, local: str, domain: str, verp: VerpConfig) -> None:
    address = verp_address(verp, message_id, f"{local}@{domain}")
    assert verp_decode(verp, address) == (message_id, f"{local}@{domain}")
    assert verp_decode(verp, address.replace(verp.domain, verp.domain.upper())) == (message_id, f"{local}@{domain}")
