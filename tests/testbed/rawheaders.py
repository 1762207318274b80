"""Producer headers the MTA's own encoder cannot write again.

A producer in any language can send a header whose AMQP long string is not UTF-8; pamqp
decodes it as `bytes`, a type it has no table encoding for. `RawLongStr` values are sent as
such long strings by `publish_raw` (this process only: pamqp's encoder is patched while it
runs).
"""

from __future__ import annotations

import asyncio
import contextlib

import aio_pika
from pamqp import commands as spec
from pamqp import encode


class RawLongStr(bytes):
    """A header value sent as an AMQP long string of exactly these octets."""


@contextlib.contextmanager
def _raw_long_strings():
    plain = encode.encode_table_value

    def encode_table_value(value):
        if isinstance(value, RawLongStr):
            return b"S" + len(value).to_bytes(4, "big") + bytes(value)
        return plain(value)

    encode.encode_table_value = encode_table_value
    try:
        yield
    finally:
        encode.encode_table_value = plain


async def apublish_raw(url: str, exchange: str, routing_key: str, messages: list[tuple[bytes, dict]]) -> None:
    """Confirmed, persistent, mandatory publishes of (body, headers) through aiormq."""
    connection = await asyncio.wait_for(aio_pika.connect(url), 30)
    async with connection:
        channel = await (await connection.channel(publisher_confirms=True)).get_underlay_channel()
        with _raw_long_strings():
            for body, headers in messages:
                await channel.basic_publish(body, exchange=exchange, routing_key=routing_key, mandatory=True,
                                            properties=spec.Basic.Properties(headers=headers, delivery_mode=2,
                                                                             content_type="application/json"))


def publish_raw(url: str, exchange: str, routing_key: str, messages: list[tuple[bytes, dict]]) -> None:
    asyncio.run(apublish_raw(url, exchange, routing_key, messages))
