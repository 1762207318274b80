"""Test-only fault injection: end the process abruptly at a named point.

``MTA_FAULT=<point>[:<n>]`` makes the process exit with ``os._exit(137)`` (no cleanup, no
flush, as a kill -9 would) the ``n``-th time (default 1) execution reaches ``<point>``.
The variable is read once at import; unset, every hook is a single attribute test.

Points: ``consumed`` (a delivery taken, before DNS), ``mid_data`` (DATA accepted with 354,
the message not yet sent), ``after_dot`` (the message and its final dot written, the reply
not read), ``after_250`` (the receiver accepted, the result not yet published),
``after_result`` (results confirmed by the broker, the acknowledgement not yet sent).
"""

from __future__ import annotations

import os

POINTS = ("consumed", "mid_data", "after_dot", "after_250", "after_result")

_point, _, _nth = os.environ.get("MTA_FAULT", "").partition(":")
ARMED = _point in POINTS
_left = int(_nth or 1) if ARMED else 0


def hit(point: str) -> None:
    """Count one pass through ``point``; at the n-th pass of the armed point, die."""
    global _left
    if point != _point:
        return
    _left -= 1
    if _left == 0:
        os.write(2, f"MTA_FAULT: exiting at {point}\n".encode())
        os._exit(137)
