"""The hand-marshalled Basic.Publish frames are byte for byte what pamqp produces."""

import pamqp.frame
import pytest
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from mta.publish import Publish, marshal


def reference(channel: int, p: Publish, message_id: str, max_body_frame: int) -> bytes:
    frames = [
        spec.Basic.Publish(exchange=p.exchange, routing_key=p.routing_key, mandatory=True),
        ContentHeader(body_size=len(p.body), properties=spec.Basic.Properties(
            content_type="application/json", headers=p.headers, delivery_mode=2, message_id=message_id)),
    ]
    frames += [ContentBody(p.body[i:i + max_body_frame]) for i in range(0, len(p.body), max_body_frame)]
    return b"".join(pamqp.frame.marshal(f, channel) for f in frames)


@pytest.mark.parametrize("publish", [
    Publish("mta.results", "delivered", b'{"id":"a"}'),
    Publish("", "mta.delay.bulk.60s", b"x" * 300_000,
            {"x-mta-id": "m1", "x-mta-attempts": 2, "x-mta-first": 1_795_000_000_000, "x-mta-results": "[]"}),
    Publish("", "mta.invalid", b"", {"x-mta-error": "body is not valid JSON", "x-mta-lane": "single"}),
    Publish("mta.results", "r\u00e9sultat", "\u00e9".encode() * 10),
])
def test_marshal_matches_pamqp(publish):
    assert marshal(3, publish, "0123abcd-17", 131_064) == reference(3, publish, "0123abcd-17", 131_064)


def test_too_long_routing_key_is_refused():
    with pytest.raises(ValueError):
        marshal(1, Publish("", "k" * 256, b"{}"), "id", 131_064)

