"""What can go wrong talking to the broker, in our words.

aio-pika, aiormq and pamqp raise a few dozen exception types, and not along the line that
matters to the MTA: aiormq's `ChannelInvalidStateError` is a RuntimeError, a refused
publish is an `AMQPError` like a closed connection, and a lost socket is an OSError.
Everything in `mta/broker/` translates them here, chained with `from`, so nothing above
this folder catches a broker library's type:

- `BrokerLost`: the connection or the channel is gone. The broker session ends; every
  delivery not acknowledged comes back to a consumer. `BrokerUnreachable` is the one that
  never came: the connection could not be opened.
- `PublishRefused`: the broker nacked or returned a publish (no queue took it), or it can
  never be written (`Unencodable`). The channel lives on; the delivery it settled stays
  unacknowledged.
- `PublishTimeout`: no confirm for a batch in time (`publish.BatchPublisher`). Whether the
  broker kept the publish is unknown, so it counts as not done; the channel lives on.
"""

from __future__ import annotations

from aiormq.exceptions import AMQPError, ChannelInvalidStateError, DeliveryError


class BrokerError(Exception):
    """A broker operation failed; the subclass says what it means for the session."""


class BrokerLost(BrokerError):
    """The connection or channel is gone: the session ends, deliveries come back."""


class BrokerUnreachable(BrokerLost):
    """The broker did not take a connection; the message says where and why."""


class PublishRefused(BrokerError):
    """The broker nacked or returned a publish, or the publish cannot be encoded."""


class Unencodable(PublishRefused, ValueError):
    """A publish that AMQP cannot carry: a header value of a type field tables do not have
    (bytes that are not UTF-8 come back from the broker as such), an integer beyond 64 bits,
    a short string over 255 octets, or a content header larger than the broker's frame."""


class PublishTimeout(BrokerError, TimeoutError):
    """No confirm from the broker in time: the publish counts as not done."""


def translate(exc: BaseException, what: str = "") -> BaseException:
    """Our exception for a broker library's (or the socket's) `exc`; anything else as it is.

    A nack or return is a refusal; every other AMQP error, aiormq's closed-channel
    RuntimeError and an OSError (reset, refused, unreachable, and a broker that did not
    answer in time) mean the connection or channel is gone."""
    if isinstance(exc, BrokerError):
        return exc
    said = f"{what}: {_text(exc)}" if what else _text(exc)
    if isinstance(exc, DeliveryError):
        new: BaseException = PublishRefused(said)
    elif isinstance(exc, (AMQPError, ChannelInvalidStateError, OSError)):
        new = BrokerLost(said)
    else:
        return exc
    new.__cause__ = exc
    return new


class mapped:
    """Run a broker call, raising our exceptions for the libraries' (see `translate`):
    ``with mapped("acknowledging"): ...``. A class rather than a generator: it wraps every
    acknowledgement and every batch of publishes, and costs a third as much."""

    __slots__ = ("what",)

    def __init__(self, what: str = "") -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, traceback) -> bool:
        if exc is not None and isinstance(exc, (AMQPError, ChannelInvalidStateError, OSError)):  # TimeoutError is an OSError
            raise translate(exc, self.what) from exc
        return False


def _text(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
