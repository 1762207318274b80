"""VERP addresses: made and read back, whatever the id and the recipient's local part."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta.config import ConfigError
from mta.inbound.verp import Verp, VerpConfig, load_verp, verp_address, verp_decode

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


SIGNED = Verp(VERP, b"a key of the operator's")


def test_a_signed_address_round_trips_and_a_forged_one_is_not_ours() -> None:
    address = verp_address(SIGNED, "order-10042", "Jane.Doe@Example.ORG")
    tag = address.split("+", 1)[1].split(".", 1)[0]
    assert len(tag) == 10 and address.endswith(".order-10042=Jane.Doe=example.org@bounces.example")
    assert verp_decode(SIGNED, address) == ("order-10042", "Jane.Doe@example.org")
    relayed = address.replace(tag, tag.upper()).replace("@bounces.example", "@BOUNCES.EXAMPLE")  # case of hex and domain
    assert verp_decode(SIGNED, relayed) == ("order-10042", "Jane.Doe@example.org")
    # the same id for another recipient, another id, another key, no tag: not ours
    assert verp_decode(SIGNED, address.replace("Jane.Doe", "victim")) is None
    assert verp_decode(SIGNED, address.replace("10042", "10043")) is None
    assert verp_decode(Verp(VERP, b"another key"), address) is None
    assert verp_decode(SIGNED, verp_address(VERP, "order-10042", "Jane.Doe@example.org")) is None
    # an unsigned configuration does not take a signed address for one of its own
    assert verp_decode(VERP, address) is None


def test_load_verp_reads_the_key_and_names_what_is_missing() -> None:
    config = VerpConfig(domain="bounces.example", key_env="VERP_KEY")
    assert load_verp(config, {"VERP_KEY": "k"}).key == b"k"
    assert "k" not in repr(load_verp(config, {"VERP_KEY": "k"}))
    with pytest.raises(ConfigError) as caught:
        load_verp(config, {})
    assert caught.value.problems == ["envelope_verp.key_env: environment variable VERP_KEY is not set or empty"]
    assert load_verp(None) is None and load_verp(VERP).key is None
